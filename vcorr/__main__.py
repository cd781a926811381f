from vcorr.cli import main

raise SystemExit(main())
