"""The constructors' signatures of npool.keras' layers, for ``inspect.signature`` (and so for
Sphinx, IDEs and ``help``): Keras' ``Layer.__new__(cls, *args, **kwargs)`` comes first in
Python's search for a class's signature and hides them."""
import inspect
from typing import Iterable


class _ConstructorSignature:
    """``cls.__signature__``: the signature of ``cls.__init__`` without ``self``, read from the
    class it is asked on (a subclass with a constructor of its own gets its own); instances have
    none (``inspect.signature(layer)`` is their call's)."""

    def __get__(self, instance: object, owner: type) -> inspect.Signature:
        if instance is not None:
            raise AttributeError("__signature__")
        signature = inspect.signature(getattr(owner, "__init__"))
        return signature.replace(parameters=tuple(signature.parameters.values())[1:],
                                 return_annotation=inspect.Signature.empty)


def show_constructor_signatures(classes: Iterable[type]) -> None:
    """Give each class (and its subclasses) its constructor's signature."""
    for cls in classes:
        setattr(cls, "__signature__", _ConstructorSignature())
