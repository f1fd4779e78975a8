"""A spawned child's entry point that needs torchgeo: importing this module (which unpickling
the child's target does before its arguments) sets up the torch stack first, as
``provision.import_torch_stack`` does in the test process."""

from provision import import_torch_stack

import_torch_stack()


def read_query(conn, dataset, query) -> None:
    conn.send(dataset[query]["image"].numpy())
