"""vico_diffusion: ST-Flow attribution and Vico guidance for diffusers video models.

Filled by later work (attention capture, graph builders, guidance, CLI); the
package is importable now so that installs and imports are stable.
"""
__version__ = "0.1.0"
