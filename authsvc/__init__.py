from httpio.accel import package_path as _package_path

__path__ = _package_path(__name__, __path__)  # the compiled modules first, when fresh
