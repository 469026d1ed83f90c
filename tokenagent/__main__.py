from tokenagent.entry import main

main()
