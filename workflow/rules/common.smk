# Configuration, registries and the input functions every stage uses.
#
# The registries (datasets.yaml, benchmarks.yaml, methods.yaml) are read here with vcorr's YAML
# reader (vcorr.config: numbers such as 1e-4 are floats). The DAG imports only torch-free vcorr
# modules (vcorr.config, vcorr.evaluation.methods, vcorr.provenance, ...), so that config
# propagation.set is checked by the same code as the jobs' --set and the code digests are the
# jobs' own. The jobs find the same registry folders via VCORR_CONFIG_DIR.
#
# Run from a checkout, or deployed as a module into a project folder that holds its own config/
# (README "Deploying the workflow as a module"). The workflow's own files (schemas, default
# registries, lists, training configs, envs, the vcorr package) are found from this file's
# source; results/, resources/ and logs/ are written in the working directory.

import functools
import hashlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

# The workflow's source: workflow/ and, beside it, config/ (default registries, lists, training
# configs), envs/ and the vcorr package. On disk for a checkout or a module given by its path; for a
# module from a git host (github(...)), Snakemake fetches each file read into its source cache and
# the vcorr package is the one installed in the environment.
_RULES_DIR = Path(str(workflow.current_basedir))  # a folder, or a URL (github(...), gitfile(...))
SOURCE_ROOT = _RULES_DIR.parents[1] if _RULES_DIR.is_dir() else None


def source_file(relative):
    """A file of the workflow's source (relative to its root, e.g. config/datasets.yaml) as a local
    path, or None when the source has none."""
    if SOURCE_ROOT is not None:
        path = SOURCE_ROOT / relative
        return path if path.is_file() else None
    try:
        return Path(workflow.source_path(f"../../{relative}"))
    except (WorkflowError, OSError):
        return None


# The DAG and the jobs use the source's own vcorr (a checkout: put first on sys.path here and on
# the jobs' PYTHONPATH below), else the installed one, which must be the same release.
VCORR_PACKAGE_ROOT = SOURCE_ROOT if SOURCE_ROOT and (SOURCE_ROOT / "vcorr" / "__init__.py").is_file() else None
if VCORR_PACKAGE_ROOT:
    sys.path.insert(0, str(VCORR_PACKAGE_ROOT))
try:
    import vcorr
except ImportError:
    raise WorkflowError(
        'the vcorr package is not installed: python3 -m pip install "vcorr[workflow]" from the '
        "release of this workflow (README: Deploying the workflow as a module)"
    )
if VCORR_PACKAGE_ROOT is None:
    import tomllib

    _release = tomllib.loads(source_file("pyproject.toml").read_text())["project"]["version"]
    if vcorr.__version__ != _release:
        raise WorkflowError(
            f"the workflow is vcorr {_release}, the installed vcorr package is {vcorr.__version__}: "
            "install the package of the workflow's release"
        )

from vcorr.config import find_config_file, load_yaml_text, schema_error, with_exponent_floats

# Values Snakemake read from the config file, as vcorr reads values (1e-4 is a float).
for section in ("propagation", "training"):
    if isinstance(config.get(section), dict) and "set" in config[section]:
        config[section]["set"] = with_exponent_floats(config[section]["set"])

validate(config, schema="../schemas/config.schema.yaml")


def project_path(relative):
    """A path a project names (config `registries`, a model's training `config`): in the working
    directory when it is there, else in the workflow's source (a checkout's .test/config, the
    training configs of config/train/ that a deployed project did not copy); None when in neither."""
    path = Path(relative)
    if path.is_absolute() or path.exists():
        return path.resolve() if path.exists() else None
    if SOURCE_ROOT is not None:
        return (SOURCE_ROOT / path).resolve() if (SOURCE_ROOT / path).exists() else None
    return source_file(relative)


def registry_folders():
    """Where each registry and list is looked up, first match wins (vcorr.config.find_config_file):
    the config `registries` folder (null: config/), then the workflow's own config/, so that a
    project's folder overrides any registry and takes the others from vcorr."""
    own = SOURCE_ROOT / "config" if SOURCE_ROOT else source_file("config/datasets.yaml").parent
    named = project_path(config["registries"] or "config")
    if named is None and config["registries"]:
        raise WorkflowError(
            f"config registries: {config['registries']}: no such folder in the working directory "
            f"{os.getcwd()} or in the workflow's source"
        )
    return list(dict.fromkeys(folder.resolve() for folder in (named, own) if folder is not None and folder.is_dir()))


REGISTRY_FOLDERS = registry_folders()


def registry_file(relative):
    """`relative` (methods.yaml, lists/...) in the first registry folder holding it, else None."""
    found = find_config_file(relative, REGISTRY_FOLDERS)
    if found is None and SOURCE_ROOT is None:
        # A module from a git host: the source's file, fetched into the folder of its config/.
        found = source_file(f"config/{relative}")
    return found


def read_registry(name, optional=False):
    """A registry, checked against workflow/schemas/<name>.schema.yaml: a typo fails the DAG
    (and so `snakemake -n`) with the file and the key, not a job later. An optional one that no
    registry folder holds reads as empty."""
    path = registry_file(f"{name}.yaml")
    if path is None and optional:
        return {}
    if path is None:
        raise WorkflowError(
            f"{name}.yaml: registry missing (looked in {', '.join(map(str, REGISTRY_FOLDERS))}; "
            f"config key `registries`: {config['registries']})"
        )
    try:
        data = load_yaml_text(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise WorkflowError(f"{path}: invalid YAML ({error})")
    error = schema_error(data, source_file(f"workflow/schemas/{name}.schema.yaml"))
    if error is not None:
        raise WorkflowError(f"{path}: {error}")
    return data


DATASETS = read_registry("datasets")
BENCHMARKS = read_registry("benchmarks")
# What `evaluate: benchmarks` may request: benchmarks whose scores are reported (role
# evaluation); validation splits are read by training only (vcorr.evaluation.validation).
EVALUATION_BENCHMARKS = {
    name: entry for name, entry in BENCHMARKS.items() if entry.get("role", "evaluation") == "evaluation"
}
METHODS = read_registry("methods")
# Models the workflow trains (rules/train.smk); none when no registry folder holds models.yaml.
MODELS = read_registry("models", optional=True)
MODEL_FILE = "results/models/{model}.pth"
# The model's untrained initialisation (`vcorr train --init-out`), the baseline `<method>_init`.
INIT_FILE = "results/models/init/{model}.pth"


def training_config(model_name):
    """A model's training config (models.yaml `config`, e.g. config/train/hvc.yaml): the project's
    copy when it has one, else the workflow's own; None when neither exists."""
    return project_path(MODELS[model_name]["config"])


def model_of_file(path):
    """The model whose export or initialisation `path` is (MODEL_FILE, INIT_FILE), else None."""
    for pattern in (INIT_FILE, MODEL_FILE):
        found = re.fullmatch(re.escape(pattern).replace(re.escape("{model}"), "([^/]+)"), path or "")
        if found:
            return found[1]
    return None


# The cross-protocol table's references; no variants when no registry folder holds protocols.yaml.
PROTOCOLS = read_registry("protocols", optional=True)


def protocol_variants():
    """`<method>@<protocol>`: a method under another protocol (vcorr.evaluation.cross_protocol,
    the code `vcorr propagate` runs them with), planned like any method of methods.yaml."""
    from vcorr.errors import VcorrError
    from vcorr.evaluation.cross_protocol import check_protocols, protocol_variants

    try:
        check_protocols(PROTOCOLS, METHODS, str(registry_file("protocols.yaml") or "protocols.yaml"))
    except VcorrError as error:
        raise WorkflowError(str(error))
    return protocol_variants(METHODS, PROTOCOLS)


# What a rule's {method} may name: a method of methods.yaml or one of its protocol variants.
EVALUATED = {**METHODS, **protocol_variants()}

# What the methods' authors published and the tables beside it (results/tables/<table>.csv); a
# registry folder without published.yaml has no tables and no released masks.
PUBLISHED = read_registry("published", optional=True)
TABLES = PUBLISHED.get("tables") or {}


def check_references():
    """Names a method takes from the other registries (a benchmark's dataset is checked when
    it is requested: a registry folder may hold only the datasets it evaluates)."""
    for name, entry in METHODS.items():
        for benchmark in entry["benchmarks"]:
            if benchmark not in BENCHMARKS:
                raise WorkflowError(
                    f"{registry_file('methods.yaml')}: {name}.benchmarks.{benchmark}: not a benchmark of benchmarks.yaml"
                )
        for index, encoder in enumerate(entry["encoders"]):
            weights_id = (encoder.get("weights") or {}).get("id")
            if weights_id is not None and weights_id not in DATASETS:
                raise WorkflowError(
                    f"{registry_file('methods.yaml')}: {name}.encoders.{index}.weights.id: '{weights_id}' is not in datasets.yaml"
                )
            trained = model_of_file((encoder.get("weights") or {}).get("path"))
            if trained and trained not in MODELS:
                raise WorkflowError(
                    f"{registry_file('methods.yaml')}: {name}.encoders.{index}.weights.path: "
                    f"'{trained}' is not a model of models.yaml"
                )
    where = registry_file("models.yaml")
    for name, entry in MODELS.items():
        dataset_id, split = entry["data"]["dataset"], entry["data"]["split"]
        if dataset_id not in DATASETS:
            raise WorkflowError(f"{where}: {name}.data.dataset: '{dataset_id}' is not in datasets.yaml")
        splits = list(DATASETS[dataset_id].get("index") or {})
        if splits != [split]:
            raise WorkflowError(
                f"{where}: {name}.data.split: '{split}': resources/index/{dataset_id}.csv indexes "
                f"{', '.join(splits) or 'nothing'} (vcorr train reads every row: one split, that one)"
            )
        if training_config(name) is None:
            raise WorkflowError(
                f"{where}: {name}.config: {entry['config']} is neither in the working directory "
                "nor in the workflow's source"
            )
        for key, source in (entry.get("weights") or {}).items():
            if source.get("model") not in (None, *MODELS) or source.get("model") == name:
                raise WorkflowError(
                    f"{where}: {name}.weights.{key}.model: '{source['model']}' is not another model of models.yaml"
                )
            if "id" in source and source["id"] not in DATASETS:
                raise WorkflowError(f"{where}: {name}.weights.{key}.id: '{source['id']}' is not in datasets.yaml")

    def follow(chain):
        for source in (MODELS[chain[-1]].get("weights") or {}).values():
            if "model" in source:
                if source["model"] in chain:
                    raise WorkflowError(
                        f"{where}: {chain[0]} starts from itself ({' -> '.join(chain + [source['model']])})"
                    )
                follow(chain + [source["model"]])

    for name in MODELS:
        follow([name])


check_references()


def check_published():
    from vcorr.errors import VcorrError
    from vcorr.report.published import check_published

    if PUBLISHED:
        try:
            check_published(PUBLISHED, METHODS, BENCHMARKS, DATASETS, str(registry_file("published.yaml")))
        except VcorrError as error:
            raise WorkflowError(str(error))
    unknown = [name for name in config["report"]["tables"] if name not in TABLES]
    if unknown:
        raise WorkflowError(
            f"config report.tables: unknown table '{unknown[0]}' (tables of "
            f"{registry_file('published.yaml') or 'no published.yaml'}: {', '.join(TABLES) or 'none'})"
        )


check_published()


def check_parameter_overrides():
    """config propagation.set: a benchmark of the registry, and overrides every requested method
    with settings for it accepts, as `vcorr propagate --set` would (vcorr's own check)."""
    from vcorr.errors import VcorrError
    from vcorr.evaluation.methods import resolve_settings
    from vcorr.propagation.parameters import PROTOCOL_PARAMS

    requested = pick(config["evaluate"]["methods"], METHODS, "methods")
    for benchmark, overrides in config["propagation"]["set"].items():
        key = f"config propagation.set.{benchmark}"
        if benchmark not in BENCHMARKS:
            raise WorkflowError(
                f"{key}: unknown benchmark '{benchmark}' (benchmarks of {registry_file('benchmarks.yaml')}: {', '.join(BENCHMARKS)})"
            )
        known = {"size", *(name for params in PROTOCOL_PARAMS.values() for name in params)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise WorkflowError(f"{key}.{unknown[0]}: not a protocol parameter (allowed: {', '.join(sorted(known))})")
        for name in requested:
            method = METHODS[name]
            if benchmark not in method["benchmarks"]:
                continue
            try:
                resolve_settings(
                    method["protocol"],
                    method["benchmarks"][benchmark],
                    overrides,
                    where=key,
                    origin=f"{key}.",
                    applied=f"{key}: {json.dumps(overrides)}",
                )
            except VcorrError as error:
                raise WorkflowError(f"{error} [method {name}, protocol {method['protocol']}]")


# Datasets with a folder of their own: unpacked from their archives, or written by their builder
# (`built_by`, no download); a derived set such as davis16 reuses another's folder.
DOWNLOADED_DATASETS = [
    name
    for name, entry in DATASETS.items()
    if entry.get("kind") == "dataset" and (entry.get("files") or entry.get("built_by"))
]


def one_of(names):
    return "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))


def benchmarks_scored_by(scorer):
    return [name for name, entry in BENCHMARKS.items() if entry["scorer"] == scorer]


# The official davis2017-evaluation scores DAVIS-2017 sets only.
CROSSCHECKED = [name for name in benchmarks_scored_by("davis") if BENCHMARKS[name].get("year") == 2017]


wildcard_constraints:
    benchmark=one_of(BENCHMARKS),
    method=one_of(EVALUATED),
    model=one_of(MODELS) or "(?!)",
    table=one_of(TABLES) or "(?!)",
    dataset=one_of(DOWNLOADED_DATASETS),
    part=r"all|shard-\d+-of-\d+",


def pick(requested, known, what):
    if requested == "all":
        return list(known)
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise WorkflowError(f"config evaluate.{what}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return list(requested)


check_parameter_overrides()


def requested_pairs():
    """(benchmark, method) for every requested method on every requested benchmark it supports."""
    benchmarks = pick(config["evaluate"]["benchmarks"], EVALUATION_BENCHMARKS, "benchmarks")
    methods = pick(config["evaluate"]["methods"], METHODS, "methods")
    return [
        (benchmark, method)
        for benchmark in benchmarks
        for method in methods
        if benchmark in METHODS[method]["benchmarks"]
    ]


def cross_protocol_cells():
    """The cross-protocol table's cells: every requested method under every protocol on every
    requested benchmark scored locally (vcorr.evaluation.cross_protocol; `vcorr report
    cross-protocol` builds the same list from the same arguments)."""
    from vcorr.evaluation.cross_protocol import cross_protocol_cells

    tasks = {name: entry["task"] for name, entry in BENCHMARKS.items()}
    return cross_protocol_cells(cross_protocol_methods(), cross_protocol_benchmarks(), METHODS, PROTOCOLS, tasks)


def cross_protocol_methods():
    """The requested methods that have settings for a requested benchmark (`all` means those)."""
    return list(dict.fromkeys(method for _, method in requested_pairs()))


def cross_protocol_benchmarks():
    requested = pick(config["evaluate"]["benchmarks"], EVALUATION_BENCHMARKS, "benchmarks")
    return [benchmark for benchmark in requested if BENCHMARKS[benchmark]["scorer"] != "server"]


def unsupported_pair(benchmark, method):
    """Why (benchmark, method) cannot be evaluated, from the registries; None when it can."""
    methods_file = registry_file("methods.yaml")
    if method not in EVALUATED:
        return f"unknown method '{method}' (methods of {methods_file}: {', '.join(METHODS)}; <method>@<protocol> for another protocol)"
    supported = ", ".join(EVALUATED[method]["benchmarks"])
    if benchmark not in BENCHMARKS:
        return f"unknown benchmark '{benchmark}' (method {method} supports: {supported})"
    if benchmark not in EVALUATED[method]["benchmarks"]:
        return f"method '{method}' has no settings for benchmark '{benchmark}' in {methods_file} (it supports: {supported})"
    return None


def method_settings(benchmark, method):
    """The method's registry settings for the benchmark; a pair it has none for fails the DAG."""
    reason = unsupported_pair(benchmark, method)
    if reason:
        raise WorkflowError(f"results/{benchmark}/{method}: {reason}")
    return EVALUATED[method]["benchmarks"][benchmark]


# --- targets the registries do not know (rules/targets.smk) ---------------------------------


def unknown_target_regex():
    """What follows results/ in an evaluation target whose benchmark or method is not in the
    registries: <b>/<m>.json|zip, scores|crosscheck/<b>/<m>.json, predictions/<b>/<m>/<part>.
    Called once the other rules are defined: the literal folders they write under results/ are
    left to them."""
    reserved = {"scores", "crosscheck", "predictions"}
    for other in workflow.rules:
        for output in other.output:
            parts = Path(str(output)).parts
            if len(parts) > 2 and parts[0] == "results" and "{" not in parts[1]:
                reserved.add(parts[1])
    known = f"(?:{one_of(BENCHMARKS)})/(?:{one_of(EVALUATED)})"
    name = r"[^/]+"
    return "|".join(
        [
            rf"(?!(?:{one_of(reserved)})/)(?!{known}\.(?:json|zip|agreement\.json)$){name}/{name}\.(?:json|zip)",
            rf"(?:scores|crosscheck)/(?!{known}\.json$){name}/{name}\.json",
            rf"predictions/(?!{known}/){name}/{name}/{name}",
        ]
    )


def refuse_unknown_target(wildcards):
    parts = Path(wildcards.target.removesuffix(".agreement.json")).with_suffix("").parts
    benchmark, method = parts[-2:] if parts[0] not in ("scores", "crosscheck", "predictions") else parts[1:3]
    raise WorkflowError(f"results/{wildcards.target}: {unsupported_pair(benchmark, method)}")


def all_targets():
    targets = ["results/summary.csv"]
    targets += [f"results/{benchmark}/{method}.json" for benchmark, method in requested_pairs()]
    if config["scoring"]["crosscheck_davis"]:
        targets += [
            f"results/crosscheck/{benchmark}/{method}.json"
            for benchmark, method in requested_pairs()
            if benchmark in CROSSCHECKED
        ]
    if config["report"]["cross_protocol"]:
        targets.append("results/cross_protocol.csv")
    targets += [f"results/tables/{name}.csv" for name in config["report"]["tables"]]
    if config["report"]["page"]:
        targets.append("results/report.html")
    return targets


# --- published numbers: tables and the authors' masks (rules/report.smk) ---------------------


@functools.cache
def table_cells(table):
    """The rows of a table of published.yaml (vcorr.report.published; `vcorr report table` builds
    the same list from the same registries)."""
    from vcorr.report.published import table_cells

    return table_cells(table, PUBLISHED, METHODS, PROTOCOLS, BENCHMARKS)


def table_results(wildcards):
    """The result of every evaluated row: an input, so the table waits for (and plans) them all."""
    return sorted(
        {
            f"results/{cell.benchmark}/{cell.evaluated_as}.json"
            for cell in table_cells(wildcards.table)
            if cell.evaluated_as
        }
    )


def table_heading(path):
    """`<title>=<path>` of a published.yaml table's CSV: its `--table` on the report page."""
    return f"{TABLES[Path(path).stem]['title']}={path}"


def released_masks(benchmark, method):
    """The folder of the authors' masks of (method, benchmark): published.yaml `masks`, under the
    unpacked download of its datasets.yaml entry."""
    from vcorr.errors import VcorrError
    from vcorr.report.published import masks_entry

    try:
        entry = masks_entry(PUBLISHED, method, benchmark)
    except VcorrError as error:
        raise WorkflowError(f"results/{benchmark}/{method}.agreement.json: {error}")
    return entry["id"], os.path.normpath(f"resources/data/{entry['id']}/{entry['root']}")


def agreement_inputs(wildcards):
    method_settings(wildcards.benchmark, wildcards.method)
    masks_id, _ = released_masks(wildcards.benchmark, wildcards.method)
    return {
        **benchmark_data(wildcards),
        "predictions": f"results/predictions/{wildcards.benchmark}/{wildcards.method}/all",
        "masks": f"resources/data/{masks_id}",
    }


# --- data ------------------------------------------------------------------------------------


def download_files(dataset):
    """The files `vcorr data fetch` must leave in resources/downloads/<dataset>/.

    Optional files and alternatives (JHMDB's videos, used only when the frame archive is absent)
    are used when present but are not outputs: their absence is no reason to rerun anything.
    """
    return [
        f"resources/downloads/{dataset}/{item['name']}"
        for item in DATASETS[dataset].get("files") or []
        if item.get("required", True) and not item.get("alternative_to")
    ]


# Attempts after a failed download (a dropped connection, a file that fails its sha256).
FETCH_RETRIES = 2


def verified_downloads(dataset):
    """The fetch rule's outputs: download_files, each wrapped in ensure(sha256=...) where its
    datasets.yaml entry gives the publisher's sha256."""
    folder = f"resources/downloads/{dataset}/"
    hashes = {folder + item["name"]: item.get("sha256") for item in DATASETS[dataset].get("files") or []}
    return [ensure(path, sha256=hashes[path]) if hashes[path] else path for path in download_files(dataset)]


def benchmark_dataset(benchmark):
    return BENCHMARKS[benchmark]["dataset"]


def data_root(benchmark):
    """The dataset root as the official tools take it (e.g. resources/data/davis17/DAVIS)."""
    return os.path.normpath(f"resources/data/{benchmark_dataset(benchmark)}/{BENCHMARKS[benchmark]['root']}")


def benchmark_data(wildcards):
    dataset = benchmark_dataset(wildcards.benchmark)
    return {"data": f"resources/data/{dataset}", "index": f"resources/index/{dataset}.csv"}


# --- weights ---------------------------------------------------------------------------------


WEIGHTS_ROOT = "resources/data"


def weights_file(weights):
    """The one place the DAG builds a checkpoint's path (vcorr's is WeightsSource.resolve):
    a file the workflow produces (`{path, format}`, e.g. a trained model under results/), or a
    registry download unpacked to resources/data/<id>/<file> (`{id, file, format}`)."""
    return weights["path"] if "path" in weights else f"{WEIGHTS_ROOT}/{weights['id']}/{weights['file']}"


def method_weights(method):
    """Every checkpoint the method reads: an input, so replacing one reruns what used it."""
    return [weights_file(encoder["weights"]) for encoder in EVALUATED[method]["encoders"] if encoder.get("weights")]


def weights_in_use():
    """{weights id: [files]} of the registry downloads every method and every trained model of
    the registries reads."""
    sources = [encoder.get("weights") or {} for method in METHODS.values() for encoder in method["encoders"]]
    sources += [source for model in MODELS.values() for source in (model.get("weights") or {}).values()]
    files = {}
    for weights in sources:
        if "id" in weights:
            files.setdefault(weights["id"], set()).add(weights["file"])
    return {weights_id: sorted(names) for weights_id, names in files.items()}


# --- training --------------------------------------------------------------------------------


def model_source_file(source):
    """A checkpoint a model starts from: another model's export, or a registry download."""
    return MODEL_FILE.format(model=source["model"]) if "model" in source else weights_file(source)


def model_dataset(model):
    return MODELS[model]["data"]["dataset"]


def training_inputs(wildcards):
    """The index and images, the config file and every checkpoint the model starts from (so a
    retrained stage one reruns stage two); with validation, the validation data and the
    downloaded weights its method reads besides the model's own."""
    model = MODELS[wildcards.model]
    dataset = model_dataset(wildcards.model)
    inputs = {
        "data": f"resources/data/{dataset}",
        "index": f"resources/index/{dataset}.csv",
        "config": str(training_config(wildcards.model)),
    }
    inputs.update({key: model_source_file(source) for key, source in (model.get("weights") or {}).items()})
    validation = training_validation(wildcards.model)
    if validation:
        benchmark, method = validation
        inputs["validation_data"] = f"resources/data/{benchmark_dataset(benchmark)}"
        inputs["validation_weights"] = [
            weights_file(encoder["weights"])
            for encoder in METHODS[method]["encoders"]
            if "id" in (encoder.get("weights") or {})
        ]
    return inputs


def file_settings(model_name):
    """The keys of the model's training config file."""
    path = training_config(model_name)
    try:
        return load_yaml_text(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise WorkflowError(f"{path}: invalid YAML ({error})")


@functools.cache
def training_validation(model_name):
    """(benchmark, method) the model validates on while training (`eval_every` > 0 in its config
    file or overrides), checked against the registries, else None. Without `eval_method`, the
    method of methods.yaml that evaluates the model's export, when there is one."""
    where = f"{registry_file('models.yaml')}: {model_name}"
    settings = {**file_settings(model_name), **model_overrides(model_name)}
    if not settings.get("eval_every"):
        return None
    benchmark, method = settings.get("eval_benchmark"), settings.get("eval_method")
    if method is None:
        readers = [
            name
            for name, entry in METHODS.items()
            if any(
                (encoder.get("weights") or {}).get("path") == MODEL_FILE.format(model=model_name)
                for encoder in entry["encoders"]
            )
        ]
        if len(readers) != 1:
            raise WorkflowError(
                f"{where}: eval_every without eval_method, and {len(readers)} methods of methods.yaml read "
                f"its export ({', '.join(readers) or 'none'}): set eval_method"
            )
        method = readers[0]
    if BENCHMARKS.get(benchmark, {}).get("role") != "validation":
        raise WorkflowError(
            f"{where}: eval_benchmark '{benchmark}' is not a benchmark of role validation in benchmarks.yaml "
            f"({', '.join(name for name, entry in BENCHMARKS.items() if entry.get('role') == 'validation')})"
        )
    if method not in METHODS:
        raise WorkflowError(f"{where}: eval_method '{method}' is not a method of methods.yaml")
    return benchmark, method


def model_overrides(model_name):
    """{key: value} of the model's registry entry: the checkpoints it starts from, its `set`,
    then config training.set (the run's own overrides win)."""
    model = MODELS[model_name]
    overrides = {key: model_source_file(source) for key, source in (model.get("weights") or {}).items()}
    overrides.update(model.get("set") or {})
    overrides.update(config["training"]["set"])
    return overrides


def training_overrides(model_name):
    """{key: value} given as `--set`: `model_overrides`, and with validation its method and the
    data root of its benchmark (where the DAG extracts it) unless given."""
    overrides = model_overrides(model_name)
    validation = training_validation(model_name)
    if validation:
        overrides.setdefault("eval_method", validation[1])
        overrides.setdefault("eval_data_root", data_root(validation[0]))
    return overrides


@functools.cache
def training_settings(model_name):
    """The resolved training config as the DAG knows it (the config file's keys with every
    override, the data, and the settings of each model it starts from): canonical JSON.

    A params: value, so that changing a hyper-parameter anywhere reruns this training and what
    uses it; its digest names the work dir, so such a change starts a fresh training instead of
    resuming a checkpoint of other settings, while a resubmitted job resumes its own."""
    model = MODELS[model_name]
    upstream = {
        key: json.loads(training_settings(source["model"])) if "model" in source else source
        for key, source in (model.get("weights") or {}).items()
    }
    settings = {
        "method": model["method"],
        "config": {**file_settings(model_name), **training_overrides(model_name)},
        "data": model["data"],
        "starts_from": upstream,
    }
    return json.dumps(settings, sort_keys=True)


def training_workdir(wildcards):
    """results/train/<model>/<settings digest>/: checkpoints and metrics, not a rule output, so
    a failed or preempted job keeps them and its rerun resumes."""
    digest = hashlib.sha256(training_settings(wildcards.model).encode()).hexdigest()[:12]
    return f"results/train/{wildcards.model}/{digest}"


def training_arguments(wildcards):
    return set_arguments(training_overrides(wildcards.model))


def gpus_per_node(resources):
    """The GPUs of one node: `gres` gpu[:type]:N on several nodes, else `gpu`."""
    gres = str(resources.get("gres", "") or "")
    if gres.startswith("gpu"):
        count = gres.rsplit(":", 1)[-1]
        return int(count) if count.isdigit() else 1
    return int(resources.get("gpu", 0) or 0)


def training_launcher(wildcards, resources):
    """How `vcorr train` starts, from the job's resources (`vcorr.train.launch`): torchrun with one
    process per GPU on one node, one torchrun per node through srun on several (`nodes`), a
    single process without a GPU."""
    from vcorr.train.launch import torchrun_prefix

    return torchrun_prefix(int(resources.get("nodes", 1) or 1), gpus_per_node(resources))


def training_resources():
    """config resources.train as the job's request. Several nodes: the Slurm plugin's keys for
    one task per node (`mpi`, `tasks`, the GPUs per node as `gres`); never a task per GPU
    (`tasks_per_gpu: 0`: torchrun starts the GPU processes)."""
    request = dict(config["resources"]["train"])
    nodes = request.pop("nodes", 1)
    request["tasks_per_gpu"] = 0
    if nodes > 1:
        gpus = request.pop("gpu")
        request.update(nodes=nodes, mpi="srun", tasks=nodes, gres=f"gpu:{gpus}")
    return request


# --- code digests ----------------------------------------------------------------------------
# The code that computes each kind of output (vcorr.provenance: every module an entry point reaches,
# comments and docstrings left out), given to the rules as params: a vcorr change that alters
# predictions reruns the propagations and what reads them; one that alters a scorer reruns that
# scorer's jobs; an edit of comments or docstrings reruns nothing. Training code is recorded in
# each model and compared by `vcorr report result` (flagged, not retrained: `--forcerun train`).


@functools.cache
def prediction_code():
    from vcorr.evaluation.pipeline import prediction_code_digest

    return prediction_code_digest()


@functools.cache
def scoring_code(scorer):
    from vcorr.evaluation.scoring import scoring_code_digest

    return scoring_code_digest(scorer)


@functools.cache
def agreement_code():
    """The agreement's code and the DAVIS scorer it runs: a change of either reruns the agreements."""
    from vcorr.provenance import code_digest

    return code_digest("vcorr.report.agreement:agreement_report")


@functools.cache
def training_code(method):
    from vcorr.train import training_code_digest

    return training_code_digest(method)


def trained_models(method):
    """The models of models.yaml whose exports `method` (of EVALUATED) reads."""
    names = (model_of_file((encoder.get("weights") or {}).get("path")) for encoder in EVALUATED[method]["encoders"])
    return [name for name in names if name in MODELS]


def models_training_code(method):
    """{model: the digest of its training method's code} for the models `method` reads: the result
    rule's param, so that a change of training code re-flags the results (never retrains)."""
    return {model: training_code(MODELS[model]["method"]) for model in trained_models(method)}


# --- propagation -----------------------------------------------------------------------------


def shard_count(benchmark):
    """Server-scored benchmarks split into config-many jobs; the others run as one."""
    if BENCHMARKS[benchmark]["scorer"] != "server":
        return 1
    return config["propagation"]["shards"].get(benchmark, 1)


def prediction_parts(benchmark, method):
    count = shard_count(benchmark)
    # Shards are numbered from 0, as `vcorr propagate --shard i/n` takes them.
    parts = ["all"] if count == 1 else [f"shard-{index}-of-{count}" for index in range(count)]
    return [f"results/predictions/{benchmark}/{method}/{part}" for part in parts]


def shard_argument(wildcards):
    match = re.fullmatch(r"shard-(\d+)-of-(\d+)", wildcards.part)
    return f"--shard {match[1]}/{match[2]}" if match else ""


def set_arguments(overrides):
    """`--set KEY=VALUE` arguments (values as JSON, which vcorr reads as YAML), sorted by key."""
    return " ".join(f"--set {shlex.quote(f'{key}={json.dumps(value)}')}" for key, value in sorted(overrides.items()))


def parameter_overrides(benchmark):
    """`--set KEY=VALUE` arguments from config propagation.set.<benchmark>."""
    return set_arguments(config["propagation"]["set"].get(benchmark, {}))


def propagation_settings(wildcards):
    """Everything of the method that shapes this benchmark's predictions.

    A params: value, so that editing one benchmark's settings (in methods.yaml or config
    propagation.set) reruns that benchmark's propagation and scoring and nothing else. Canonical
    JSON (sorted keys): reordering or reformatting the YAML is no change.
    """
    from vcorr.evaluation.methods import METHOD_OPTIONS

    method = EVALUATED[wildcards.method]
    settings = {
        "encoders": method["encoders"],
        "fusion": method.get("fusion"),
        "input": method["input"],
        "protocol": method["protocol"],
        "options": {key: method[key] for key in METHOD_OPTIONS if key in method},
        "benchmark": method_settings(wildcards.benchmark, wildcards.method),
        "overrides": config["propagation"]["set"].get(wildcards.benchmark, {}),
    }
    return json.dumps(settings, sort_keys=True)


# --- scoring and reports ---------------------------------------------------------------------


def evaluation_file(benchmark, method):
    """What a result reports: the scorer's JSON, or the archive for an evaluation server."""
    method_settings(benchmark, method)
    if BENCHMARKS[benchmark]["scorer"] == "server":
        return f"results/{benchmark}/{method}.zip"
    return f"results/scores/{benchmark}/{method}.json"


def propagate_timings(benchmark, method):
    return [
        f"logs/benchmarks/propagate/{benchmark}/{method}.{Path(part).name}.tsv"
        for part in prediction_parts(benchmark, method)
    ]


def evaluate_timing(benchmark, method):
    stage = "export" if BENCHMARKS[benchmark]["scorer"] == "server" else "score"
    return f"logs/benchmarks/{stage}/{benchmark}/{method}.tsv"


def benchmarks_scored_locally():
    return [name for name, entry in BENCHMARKS.items() if entry["scorer"] != "server"]


def scorer_lists(wildcards):
    """The list shipped in the registry folder that a scorer reads (JHMDB's split), as an input.
    A benchmark whose list lives in its data (video_list) needs none: the scorer finds it there."""
    entry = BENCHMARKS[wildcards.benchmark]
    if entry["scorer"] != "jhmdb" or "video_list" in entry:
        return {}
    return {"split": str(registry_file(entry["split_list"]))}


def scorer_arguments(wildcards, input, threads):
    """What one scorer takes beyond --data-root/--predictions/--out (the rest from --benchmark).

    DAVIS's official CSVs go into a folder beside the rule's output, never into its input."""
    scorer = BENCHMARKS[wildcards.benchmark]["scorer"]
    if scorer == "davis":
        return f"--jobs {threads} --csv-dir results/scores/{wildcards.benchmark}/{wildcards.method}.official"
    if scorer == "jhmdb" and "split" in input.keys():
        return f"--split {input.split}"
    return ""


def job_resources(stage):
    return config["resources"][stage]


# Every job sees the registry folders as VCORR_CONFIG_DIR and runs the workflow's own `vcorr`
# (a checkout: workflow/scripts/vcorr, `python3 -m vcorr` with the checkout on PYTHONPATH; a module
# from a git host: the installed one), whatever environment it runs in: the system one, or a conda
# env of envs/ (--software-deployment-method conda) that holds only the dependencies. Cluster jobs
# re-read this file, so they get it too.
shell.prefix(
    "set -euo pipefail; "
    f"export VCORR_CONFIG_DIR={shlex.quote(os.pathsep.join(map(str, REGISTRY_FOLDERS)))}; "
    + (
        f"export PATH={shlex.quote(str(VCORR_PACKAGE_ROOT / 'workflow' / 'scripts'))}:\"$PATH\"; "
        f'export PYTHONPATH={shlex.quote(str(VCORR_PACKAGE_ROOT))}"${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; '
        if VCORR_PACKAGE_ROOT
        else ""
    )
)


# --- the report page (config report.page) ---


def trained_models_read():
    """Models of models.yaml that a requested method reads, and the models they start from
    (stage one before stage two): their training curves go on the page."""
    models = []

    def add(model):
        for source in (MODELS[model].get("weights") or {}).values():
            if "model" in source:
                add(source["model"])
        if model not in models:
            models.append(model)

    for method in sorted({method for _, method in requested_pairs()}):
        for model in trained_models(method):
            add(model)
    return models


TRAINING_CURVES = "results/report/training/{model}.png"
OVERLAY_FILE = "results/report/overlays/{benchmark}/{method}/{sequence}.png"


def result_labels(wildcards):
    """How Snakemake's report lets a reviewer filter a result: benchmark, method, protocol (a
    `<method>@<protocol>` variant is its method under that protocol)."""
    from vcorr.evaluation.cross_protocol import split_name

    method, _ = split_name(wildcards.method)
    return {"benchmark": wildcards.benchmark, "method": method, "protocol": EVALUATED[wildcards.method]["protocol"]}


def page_words(wildcards, input):
    """`--note` and `--caption` arguments of `vcorr report page`: that the data are synthetic
    (benchmarks of a dataset vcorr builds), and what each figure shows."""
    from vcorr.report import captions

    benchmarks = dict.fromkeys(benchmark for benchmark, _ in requested_pairs())
    notes = captions.synthetic_data_notice(benchmarks, BENCHMARKS, DATASETS)
    described = {input.scores: captions.scores_caption(config["report"]["cross_protocol"])}
    for model in trained_models_read():
        settings = json.loads(training_settings(model))["config"]
        described[TRAINING_CURVES.format(model=model)] = captions.training_caption(model, MODELS[model], settings)
    for entry in config["report"]["overlays"]:
        described[OVERLAY_FILE.format(**entry)] = captions.overlay_caption(
            entry["benchmark"], entry["method"], entry["sequence"]
        )
    arguments = [f"--note {shlex.quote(note)}" for note in notes]
    arguments += [f"--caption {shlex.quote(f'{path}={text}')}" for path, text in described.items()]
    return " ".join(arguments)


def overlay_files():
    """One strip per config report.overlays entry, checked against the requested pairs."""
    files = []
    for index, entry in enumerate(config["report"]["overlays"]):
        benchmark, method = entry["benchmark"], entry["method"]
        if (benchmark, method) not in requested_pairs():
            raise WorkflowError(f"config report.overlays.{index}: ({method}, {benchmark}) is not a requested pair")
        if BENCHMARKS[benchmark]["task"] not in ("vos", "vip"):
            raise WorkflowError(f"config report.overlays.{index}: {benchmark} has no label maps to overlay")
        files.append(OVERLAY_FILE.format(**entry))
    return files
