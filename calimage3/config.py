"""Workflow configuration: type coercion of command-line overrides."""

import yaml

__all__ = ["coerce_types"]


def _types(spec, definitions):
    if "$ref" in spec:
        spec = definitions[spec["$ref"].rsplit("/", 1)[-1]]
    kind = spec.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def _coerce(value, types):
    if not isinstance(value, str):
        return value
    if value.strip() in ("null", "None", "~") and "null" in types:
        return None
    if "string" in types:
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def coerce_types(config, schema):
    """Give step parameters from ``--config step={...}`` their schema types.

    Snakemake passes the leaf values of nested command-line overrides as
    strings (``'4.0'``); where the schema says a parameter is not a string,
    the value is parsed as YAML so ``4.0``, ``true`` and ``null`` mean what
    they say.  Values of other types, and parameters the schema does not
    know (which validation then reports), are left alone.

    Parameters
    ----------
    config : dict
        The merged configuration; modified in place and returned.
    schema : dict
        The JSON schema of the configuration.
    """
    definitions = schema.get("definitions", {})
    for key, section in schema.get("properties", {}).items():
        if key not in config:
            continue
        if section.get("type") == "object" and isinstance(config[key], dict):
            props = section.get("properties", {})
            for name, value in config[key].items():
                if name in props:
                    config[key][name] = _coerce(value, _types(props[name], definitions))
        else:
            config[key] = _coerce(config[key], _types(section, definitions))
    return config
