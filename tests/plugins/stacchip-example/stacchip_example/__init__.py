"""A third-party plugin: platform ``example-sat`` (one uint8 ``mask`` layer: 1 = cloud,
255 = nodata), an override of Sentinel-2 statistics that counts only SCL class 9 as
cloud, and a command."""

import click

from stacchip_core.plugin_api import Band, ChipStats, Platform, class_mask, hookimpl, hookimpl_for

PLATFORM = Platform(
    name="example-sat",
    collections=("example-collection",),
    bands=(Band("pan", ("B1",)),),
    aux=(Band("mask", ("MASK",)),),
    nodata=255,
)


@hookimpl
def stacchip_platforms():
    return [PLATFORM]


@hookimpl_for(PLATFORM)
def stacchip_chip_stats(platform, grid, read_asset):
    mask = read_asset("mask")
    return ChipStats(
        cloud=grid.chip_fractions(mask.data == 1, mask.factor),
        nodata=grid.chip_fractions(mask.data == 255, mask.factor),
    )


# tryfirst: runs before stacchip-sentinel2's implementation, and firstresult stops there
@hookimpl_for("sentinel-2-l2a", tryfirst=True, specname="stacchip_chip_stats")
def s2_high_probability_clouds_only(platform, grid, read_asset):
    scl = read_asset("scl")
    return ChipStats(
        cloud=grid.chip_fractions(class_mask(scl.data, [9]), scl.factor),
        nodata=grid.chip_fractions(scl.data == 0, scl.factor),
    )


@hookimpl
def stacchip_register_commands(cli):
    @cli.command(name="example-hello")
    @click.argument("name")
    def hello(name):
        """Say hello (a command added by a plugin)."""
        click.echo(f"hello {name} from stacchip-example")
