"""First-party plugins of infoshape, one module (or subpackage) per method.

Each is registered under the ``infoshape.plugins`` entry-point group exactly as
a third-party plugin would be; the runtime knows none of them by name.
"""

__all__: list[str] = []
