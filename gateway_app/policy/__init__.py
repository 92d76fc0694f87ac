"""Policy as code: Rego modules evaluated with regorus, one engine per thread."""
