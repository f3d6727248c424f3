"""
Command-line options for every script: `--key=value` overrides of the defaults a script declares at its top,
typed like the default; a bare `--flag` for booleans; a positional FILE.py of assignments (a config file) is
applied first, so the command line wins. `-h`/`--help` prints the docstring and each option with its comment.

    config, given = options.parse_args(sys.argv[1:], options.defaults_of(globals()), __file__)

Bad input raises ConfigError, which one_line_errors() prints as one line (exit status 1).
"""
import ast
import difflib
import os
import re
import sys
import types

import torch


class ConfigError(ValueError):
    """Bad input: printed as one line on stderr, exit status 1, before any file is written."""


class TrainingError(RuntimeError):
    """A run that must stop (non-finite loss, failed save): printed as one line on stderr, exit status 1."""


def one_line_errors():
    """Let a script end on ConfigError or TrainingError with 'error: ...' on stderr and exit status 1."""
    default = sys.excepthook

    def hook(kind, err, tb):
        if issubclass(kind, (ConfigError, TrainingError)):
            print(f"error: {err}", file=sys.stderr, flush=True)
        else:
            default(kind, err, tb)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sys.stderr.flush()  # exit at once: torchrun then stops the other processes, which would otherwise
            os._exit(1)         # wait in their next all-reduce for this one until the collective's timeout
    sys.excepthook = hook


def defaults_of(namespace):
    """The lowercase simple values of a module's globals: the defaults block of a script."""
    return {k: v for k, v in namespace.items() if not k.startswith('_') and k.islower()
            and isinstance(v, (int, float, bool, str, type(None)))}


def parse_args(argv, defaults, source, types=None, choices=None):
    """Returns (config, set of keys given). `types` names the type of options whose default is None; `choices`
    maps an option to its allowed values. -h/--help prints the docstring and every option with its comment."""
    types, choices = types or {}, choices or {}
    if {'-h', '--help'} & set(argv):
        print(usage(source, defaults, choices))
        sys.exit(0)
    config, given = dict(defaults), set()
    files = config_files(argv)
    for path in files:
        if not path.endswith('.py') or not os.path.isfile(path):
            raise ConfigError(f"bad argument {path!r}: use --key=value (e.g. --head=wide) or a config file "
                              f"config/NAME.py")
        for key, val in read_config_file(path).items():
            check_key(key, defaults, f" in {path}")
            config[key] = typed(key, val, defaults, types)
            given.add(key)
    for arg in argv:
        if arg in files:
            continue
        key, eq, raw = arg[2:].partition('=')
        check_key(key, defaults)
        if not eq:
            if (types.get(key) or type(defaults[key])) is not bool:
                raise ConfigError(f"--{key} needs a value: --{key}=...")
            raw = 'True'
        config[key] = coerce(key, raw, defaults, types)
        given.add(key)
    for key, allowed in choices.items():
        if config[key] not in allowed:
            raise ConfigError(f"--{key} must be one of {', '.join(map(str, allowed))}; got {config[key]!r}")
    return config, given


def config_files(argv):
    """The config files among a script's arguments: every argument that is not --key=value."""
    return [a for a in argv if not a.startswith('--')]


def check_key(key, defaults, where=''):
    if key not in defaults:
        near = difflib.get_close_matches(key, defaults, n=1)
        hint = f"did you mean --{near[0]}?" if near else "--help lists the options"
        raise ConfigError(f"unknown option --{key}{where}: {hint}")


def read_config_file(path):
    """The assignments of a config file (plain Python: `n_embd = 256`), as a dict."""
    namespace = {}
    try:
        exec(compile(open(path).read(), path, 'exec'), {}, namespace)
    except Exception as e:
        raise ConfigError(f"config file {path} does not run ({type(e).__name__}: {e})".splitlines()[0])
    return {k: v for k, v in namespace.items()  # a module it imports is not an option
            if not k.startswith('_') and not isinstance(v, types.ModuleType)}


def typed(key, val, defaults, types=None):
    """A value from a config file, typed like the default, as on the command line (a None default of no
    known type takes any value)."""
    if defaults[key] is None and key not in (types or {}):
        return val
    return coerce(key, val if isinstance(val, str) else repr(val), defaults, types)


def coerce(key, raw, defaults, types=None):
    """The string `raw` as a value of the default's type (or types[key] when the default is None)."""
    want = (types or {}).get(key) or type(defaults[key])
    if want is str:
        return raw
    try:
        val = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        val = {'true': True, 'false': False}.get(raw.lower(), raw)
    if val is None and defaults[key] is None:
        return None
    if want is float and type(val) is int:
        val = float(val)
    if want is bool and val in (0, 1) and type(val) is int:
        val = bool(val)
    if type(val) is not want:
        raise ConfigError(f"--{key} expects {want.__name__} (default {defaults[key]!r}), got {raw!r}")
    return val


def usage(source, defaults, choices=None):
    """The script's docstring, then one line per option: --key=default, its comment in the source, its
    choices."""
    text = open(source).read()
    doc = ast.get_docstring(ast.parse(text)) or ''
    found = [(m[1], m[2]) for m in re.finditer(r'^(\w+) *=[^\n#]*#+ *(.*)$', text, re.M)]
    comments = dict(reversed(found))  # an option's first comment: the defaults block, not a later use
    lines = []
    for k, v in defaults.items():
        extra = f" (one of {', '.join(map(str, choices[k]))})" if choices and k in choices else ''
        lines.append(f"  --{k}={v}".ljust(34) + f" {comments.get(k, '')}{extra}".rstrip())
    head = "options (--key=value; the command line wins over a config file FILE.py):"
    return f"{doc}\n\n{head}\n" + '\n'.join(lines)


def writable(key, path, example):
    """An output path, checked before the work it would hold: a file that can be made in its folder."""
    existed = os.path.exists(path)
    try:
        with open(path, 'a'):  # 'a' leaves an existing file as it is
            pass
    except OSError as e:
        raise ConfigError(f"--{key}={path}: cannot write it ({e.strerror}); give e.g. --{key}={example}")
    if not existed:
        os.remove(path)


def positive(config, *keys, zero_ok=False):
    for key in keys:
        value = config[key]
        if value is not None and not (value >= 0 if zero_ok else value > 0):  # None: unset, the default
            raise ConfigError(f"--{key} must be {'≥ 0' if zero_ok else 'positive'}, got {value}")

