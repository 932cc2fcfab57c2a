from deepstep.cli import main

main()
