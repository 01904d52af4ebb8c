from rnnserve_server.app import main

main()
