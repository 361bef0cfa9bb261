"""Long convolutions over the token dim (dim 1), by FFT. Nothing here knows about ranks."""

from .fft_conv import CONV_MODES, circular_conv, conv_length, cross_conv, spectral_cross

__all__ = ["CONV_MODES", "circular_conv", "conv_length", "cross_conv", "spectral_cross"]
