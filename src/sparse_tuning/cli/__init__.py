from .main import main, make_parser

__all__ = ["main", "make_parser"]
