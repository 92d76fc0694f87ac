# Tests for oauth-scope-apiproduct-opa-cm.rego, run by `python -m gateway_app test-rego`.
#
# request_input(api_product_id, state) is the input build_input() makes for
#   GET http://api.example.com/api/pets?limit=1 (request id "req-1", no client address)
# on a route labelled usagePlans=dev-portal with usage plan "gold", where `state` is the
# input.state object. tests/test_rego_modules.py checks that it equals build_input()'s output,
# so these tests and the gateway's input stay in step.
package test

import rego.v1

http := {
	"method": "GET",
	"path": "/api/pets?limit=1",
	"host": "api.example.com",
	"headers": {
		"host": "api.example.com",
		"authorization": "Bearer not-a-real-token",
		"accept": "application/json",
	},
	"scheme": "http",
	"query": "limit=1",
	"id": "req-1",
	"protocol": "HTTP/1.1",
}

attributes(api_product_id) := {
	"request": {"http": http},
	"metadata_context": {"filter_metadata": {"io.solo.gloo.apimanagement": {
		"api_product_id": api_product_id,
		"usagePlan": "gold",
		"usage_plan": "gold",
	}}},
	"context_extensions": {"usagePlans": "dev-portal"},
}

request_input(api_product_id, state) := {
	"check_request": {"attributes": attributes(api_product_id)},
	"state": state,
	"http_request": {
		"method": http.method,
		"path": http.path,
		"host": http.host,
		"headers": http.headers,
		"query": http.query,
	},
	"attributes": attributes(api_product_id),
	"parsed_path": ["api", "pets"],
	"parsed_query": {"limit": ["1"]},
	"version": {"ext_authz": "v3", "encoding": "protojson"},
}

jwt_state(claims) := {"jwtAccessToken": claims, "dynamicMetadata": {}}

test_scope_matching_the_api_product_is_allowed if {
	allow with input as request_input("petstore", jwt_state({"sub": "my-client", "scope": "openid petstore"}))
}

test_scope_listing_several_products_including_this_one_is_allowed if {
	allow with input as request_input("petstore", jwt_state({"scope": "tracks petstore"}))
}

test_scope_of_another_api_product_is_denied if {
	not allow with input as request_input("petstore", jwt_state({"sub": "my-client", "scope": "openid tracks"}))
}

test_scope_that_only_contains_the_product_id_is_denied if {
	not allow with input as request_input("pets", jwt_state({"scope": "petstore"}))
}

test_token_without_scope_claim_is_denied if {
	not allow with input as request_input("petstore", jwt_state({"sub": "my-client"}))
}

test_empty_scope_is_denied if {
	not allow with input as request_input("petstore", jwt_state({"scope": ""}))
}

test_empty_api_product_id_is_denied_even_with_a_matching_empty_scope if {
	not allow with input as request_input("", jwt_state({"scope": "openid  petstore"}))
}

test_request_without_jwt_claims_is_denied if {
	not allow with input as request_input("petstore", {"introspection": {"scope": "petstore"}, "dynamicMetadata": {}})
}

test_allow_defaults_to_false_on_an_empty_input if {
	allow == false with input as {}
}
