"""Make PyPI's torchvision import beside the CPU torch 2.13 wheel: its fake-kernel registrations
(``torchvision/_meta_registrations.py``) fail when torchvision's C++ ops did not load, so they are
registered only when ``torchvision.extension._has_ops()``. Image and video preprocessing in
transformers does not need those ops. Idempotent.

Usage: python tools/guard_torchvision.py TORCHVISION_PACKAGE_DIR
"""
import re
import sys
from pathlib import Path

GUARD = '# mmllava: register fake kernels only when torchvision ops loaded\n'
HELPER = (GUARD + 'def _mmllava_register_fake(*args, **kwargs):\n'
          '    import torchvision.extension\n'
          '    if torchvision.extension._has_ops():\n'
          '        return torch.library.register_fake(*args, **kwargs)\n'
          '    return lambda fn: fn\n\n\n')


def guard(package_dir: Path) -> None:
    path = package_dir / '_meta_registrations.py'
    text = path.read_text()
    if GUARD in text:
        return
    text, count = re.subn(r'@torch\.library\.register_fake\(', '@_mmllava_register_fake(', text)
    if not count:
        sys.exit(f'{path}: no register_fake decorator to guard')
    first = text.index('\n\n\n') + 3  # after the import block
    path.write_text(text[:first] + HELPER + text[first:])


if __name__ == '__main__':
    guard(Path(sys.argv[1]))
