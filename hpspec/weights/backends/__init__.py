"""The quantize back ends (bitsandbytes, optimum-quanto), each imported on first use."""
