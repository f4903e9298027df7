from actstream.cli import main

raise SystemExit(main())
