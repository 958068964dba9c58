"""Running the service: Hypercorn wiring, worker processes, process-wide settings.

``server``      one process serving: the drivers' loop, the sources, the app under Hypercorn
``workers``     several processes sharing one listening socket
``heap``        the garbage collector's settings once start-up is done
``writeguard``  Hypercorn's connection with a write idle limit
``memory``      freed memory handed back to the operating system after large answers
``stopping``    stop signals recorded for the whole life of ``serve``
``tracing``     OpenTelemetry behind the core's span seam, when ``OTEL_*`` asks for it

Nothing is imported here: the web layer uses ``memory`` and ``writeguard`` while
``server`` imports the web layer, so each module is imported by its own name.
"""
