"""Tooling shared by the tests, ``scripts/`` and ``loadtests/``; not part of the service.

It calls the service's own code for everything but what a benchmark measures:

- ``localrun``: ``tracecode serve`` as a child process, a throwaway PostgreSQL, migrations;
- ``api``: talking to a running service: registry set-up (orgs, products, keys), request bodies;
- ``baseline``: the service's use cases called straight, without HTTP, JSON or validation;
- ``codes``: fresh CN20 codes and SSCCs;
- ``stats``: percentiles and the machine's description.

Installed with the service (``pip install -e .``), so ``import benchkit`` works from
the tests, ``scripts/*.py`` and ``loadtests/`` alike.
"""
