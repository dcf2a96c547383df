from pyunion.cli import main

raise SystemExit(main())
