"""`python -m hub_service`: the availability service, as the hub runs it."""

from .app import main

main()
