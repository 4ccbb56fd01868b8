"""The subscription system: instances announce themselves over UDP, the master keeps the node table."""
