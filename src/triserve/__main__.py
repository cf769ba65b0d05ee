from triserve.cli import main

main()
