"""An installed app whose tasks module cannot be imported, as after a bad deploy."""
