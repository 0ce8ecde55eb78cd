"""edgecap exporter (workstation side): imports torch and transformers."""
