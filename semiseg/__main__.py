from semiseg.cli import main

raise SystemExit(main())
