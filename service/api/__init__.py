"""HTTP: routes, the API-key dependency, error rendering and ASGI middleware."""
