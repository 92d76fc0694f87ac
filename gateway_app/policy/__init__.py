"""Policy as code: Rego modules loaded and checked once (:mod:`.loader`), evaluated with
regorus on one engine per thread (:mod:`.engine`) over the input document (:mod:`.input_document`)
trimmed to what they read (:mod:`.input_shape`); results read by :mod:`.decision`.
"""
