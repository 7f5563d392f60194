//! The OpenAPI 3.1 description of the API, served at `/api/openapi.json`.

use serde_json::{json, Value};

fn body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn ok(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"type": "object"}}}})
}

fn ok_with(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// How `/api/embed` and `/api/classify` choose a model.
const COLLECTION_MODEL: &str =
    "whose model to use; required when more than one collection is served";

fn errors() -> Value {
    json!({"$ref": "#/components/responses/Error"})
}

/// The document.
pub fn document() -> Value {
    let name =
        json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "gclip", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Multimodal search over gclip collections. Writes need the API key when the server has one (Authorization: Bearer KEY or X-API-Key)."},
        "paths": {
            "/api/health": {"get": {"summary": "Liveness", "responses": {"200": ok("status")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format"}}}},
            "/api/collections": {
                "get": {"summary": "List collections", "responses": {"200": ok("collections")}},
                "post": {"summary": "Create a collection under --root",
                         "requestBody": body(json!({"type": "object", "required": ["name", "model"], "properties": {
                             "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                             "model": {"type": "string"}, "arch": {"type": "string"},
                             "embed": {"type": "string", "description": "FIELD[:WEIGHT],…", "example": "title:0.3,image:0.7"},
                             "image_fields": {"type": "array", "items": {"type": "string"}},
                             "precision": {"type": "string", "enum": ["fp32", "bf16", "int8"], "description": "precision of the vectors; the server's --precision, else fp32"}}})),
                         "responses": {"201": ok("created"), "4XX": errors()}}
            },
            "/api/collections/{name}": {
                "parameters": [name],
                "get": {"summary": "Collection info", "responses": {"200": ok("info"), "4XX": errors()}},
                "delete": {"summary": "Delete (files removed only under --root)", "responses": {"200": ok("deleted"), "4XX": errors()}}
            },
            "/api/collections/{name}/documents": {
                "parameters": [name],
                "get": {"summary": "List documents by id", "parameters": [
                    {"name": "offset", "in": "query", "schema": {"type": "integer"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
                    "responses": {"200": ok("documents"), "4XX": errors()}},
                "post": {"summary": "Add or replace documents (embedded per the collection's spec)",
                         "requestBody": body(json!({"type": "object", "required": ["documents"], "properties": {
                             "documents": {"type": "array", "items": {"type": "object", "description": "id plus fields: text, image path or http(s) URL, numbers, tags"}}}})),
                         "responses": {"200": ok("written and failed"), "4XX": errors()}}
            },
            "/api/collections/{name}/documents/{id}": {
                "parameters": [name, id],
                "get": {"summary": "One document", "responses": {"200": ok("document"), "4XX": errors()}},
                "patch": {"summary": "Set some fields (null removes one); re-embeds only when an embedded field changed",
                          "requestBody": body(json!({"type": "object", "description": "fields to set; the id cannot change"})),
                          "responses": {"200": ok("updated, reembedded, generation"), "4XX": errors()}},
                "delete": {"summary": "Delete a document", "responses": {"200": ok("deleted"), "4XX": errors()}}
            },
            "/api/collections/{name}/documents/{id}/thumbnail": {
                "parameters": [name, id, {"name": "size", "in": "query", "schema": {"type": "integer", "minimum": 16, "maximum": 1024}}],
                "get": {"summary": "PNG thumbnail of the document's image", "responses": {"200": {"description": "image/png"}, "4XX": errors()}}
            },
            "/api/collections/{name}/search": {
                "parameters": [name],
                "post": {"summary": "Search by text, image, weighted parts; filters; paging; hybrid BM25",
                         "requestBody": body(json!({"$ref": "#/components/schemas/Search"})),
                         "responses": {"200": ok("hits best first: id, score, fields, image"), "4XX": errors()}}
            },
            "/api/embed": {"post": {"summary": "Embed texts and images",
                "requestBody": body(json!({"type": "object", "properties": {
                    "collection": {"type": "string", "description": COLLECTION_MODEL}, "texts": {"type": "array", "items": {"type": "string"}},
                    "images": {"type": "array", "items": {"type": "string", "description": "base64"}}}})),
                "responses": {"200": ok_with("dim and embeddings (texts first, then images)", json!({"type": "object", "properties": {
                    "dim": {"type": "integer"},
                    "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}})),
                    "4XX": errors()}}},
            "/api/classify": {"post": {"summary": "Zero-shot classification of a text or image",
                "requestBody": body(json!({"type": "object", "required": ["labels"], "properties": {
                    "collection": {"type": "string", "description": COLLECTION_MODEL}, "labels": {"type": "array", "items": {"type": "string"}},
                    "text": {"type": "string"}, "image": {"type": "string"}, "template": {"type": "string", "example": "a photo of a {}."}}})),
                "responses": {"200": ok_with("every label, most probable first", json!({"type": "object", "properties": {
                    "labels": {"type": "array", "items": {"$ref": "#/components/schemas/LabelScore"}}}})),
                    "4XX": errors()}}}
        },
        "components": {
            "schemas": {
                "Search": {"type": "object", "properties": {
                    "q": {"type": "string"},
                    "image": {"type": "string", "description": "base64 (data: URL accepted)"},
                    "image_url": {"type": "string", "description": "http(s) URL the server fetches"},
                    "queries": {"type": "array", "items": {"type": "object", "properties": {
                        "text": {"type": "string"}, "image": {"type": "string"}, "image_url": {"type": "string"}, "document": {"type": "string"},
                        "vector": {"type": "array", "items": {"type": "number"}}, "weight": {"type": "number"}}}},
                    "filter": {"type": "string", "example": "price < 50 AND tags:summer AND NOT sold"},
                    "limit": {"type": "integer", "default": 10}, "offset": {"type": "integer", "default": 0},
                    "exact": {"type": "boolean"}, "hybrid": {"type": "boolean"}, "lexical": {"type": "boolean"},
                    "fusion": {"type": "string", "enum": ["rrf", "weighted"]}}},
                "LabelScore": {"type": "object", "required": ["label", "probability", "cosine"], "properties": {
                    "label": {"type": "string"},
                    "probability": {"type": "number", "description": "softmax over the labels of logit_scale · cosine; as in `gclip classify --json`"},
                    "cosine": {"type": "number", "description": "cosine similarity of the query and the label's prompt"}}},
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}}}}}
            },
            "responses": {"Error": {"description": "bad input, unknown collection or document, bad filter, missing key",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}
        }
    })
}
