from stacchip_core import hookimpl


@hookimpl
def stacchip_chip_stat(platform):  # misspelt: the hook is stacchip_chip_stats
    return None
