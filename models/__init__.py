"""Networks (torch): segmenters, generators, line-art and style models, in one registry.

Each model file keeps the same order: blocks, model, checkpoint conversion, named
configs, factory. Constructors take typed arguments; configuration maps onto them in one
factory. Adding a model: register it by name so ``create(name, **cfg)`` builds it and the
test suite runs it forward and backward automatically.
"""
