"""Plugins that ship with stacchip-core. Each module is a plugin like any other (hook
implementations only); the plugin loader registers them by module name before the entry
points, so nothing here is imported by the code it plugs into."""

# plugin name (as `stacchip plugins --all` lists it) -> module
BUILTINS = {
    "stacchip-core.planetary-computer": "stacchip_core.builtin_plugins.planetary_computer",
}
