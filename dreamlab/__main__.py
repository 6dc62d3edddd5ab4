from dreamlab.cli import main

main()
