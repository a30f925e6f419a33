from atfork._cli import main

raise SystemExit(main())
