import sys

if sys.argv[1:2] == ["demo"]:
    from .demo import main

    sys.exit(main(sys.argv[2:]))
if sys.argv[1:2] == ["ceiling"]:
    from .ceiling import main

    sys.exit(main(sys.argv[2:]))
from .build import main

sys.exit(main())
