"""Object stores, settings and STAC catalogs: everything that talks to the outside."""
