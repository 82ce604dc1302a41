"""The world's model files by name (in <root>/models/<folder>/): what the build writes and the report reads."""
CHECKPOINT = "emma-world-sd15.safetensors"
ELLA_FILE = "emma-world-ella.safetensors"
T5_FILE = "emma-world-flan-t5-standin.safetensors"
OBJECT_MODULE = "emma-world-object.safetensors"
STYLE_MODULE = "emma-world-style.safetensors"
ADAPTER_FILE = "emma-world-ipadapter.safetensors"  # the IP-Adapter peer: in <root>/peer/, not a pack model
