"""Network dissection: score every unit of a layer against every concept of a store."""
