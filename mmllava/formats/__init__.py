"""Format knowledge in one place: converters between on-disk layouts and transformers-native modules.

Import the submodule you need (e.g. ``mmllava.formats.internlm2``); this package imports nothing
eagerly so that light converters do not pull in transformers."""
