//! A small GraphQL-style executor: parses a query's selection set, fans out to the in-process
//! subgraphs (products, reviews, inventory) and merges their answers into one response.

use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use crate::cache;
use crate::incidents::Incidents;

/// Products in the catalog subgraph.
const CATALOG_SIZE: usize = 200;
/// Reviews per product in the reviews subgraph.
const REVIEWS_PER_PRODUCT: usize = 4;

/// One field of a selection set: `name(arg: value) { ...selection }`.
#[derive(Debug, PartialEq)]
struct Field {
    name: String,
    args: Vec<(String, Value)>,
    selection: Vec<Field>,
}

impl Field {
    fn arg(&self, name: &str) -> Option<&Value> {
        self.args.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// Executes `query` and returns the response document (`data`, or `errors`).
pub fn execute(query: &str, incidents: Incidents) -> Value {
    let fields = match parse(query) {
        Ok(fields) => fields,
        Err(message) => return json!({"errors": [{"message": message}]}),
    };
    let mut data = Map::new();
    let mut errors = Vec::new();
    for field in &fields {
        match field.name.as_str() {
            "products" => {
                let first = field.arg("first").and_then(Value::as_u64).unwrap_or(10) as usize;
                let products = products_subgraph(first.min(CATALOG_SIZE))
                    .into_iter()
                    .map(|product| resolve_product(product, &field.selection, incidents))
                    .collect();
                data.insert("products".into(), Value::Array(products));
            }
            other => errors.push(
                json!({"message": format!("Cannot query field \"{other}\" on type \"Query\"")}),
            ),
        }
    }
    if errors.is_empty() {
        json!({ "data": data })
    } else {
        json!({ "data": data, "errors": errors })
    }
}

/// Builds one product object with the selected fields, asking the other subgraphs as needed.
fn resolve_product(product: &Value, selection: &[Field], incidents: Incidents) -> Value {
    let id = product["id"].as_str().unwrap_or_default();
    let mut out = Map::new();
    for field in selection {
        let value = match field.name.as_str() {
            "reviews" => Value::Array(
                reviews_subgraph(id)
                    .iter()
                    .map(|review| select(review, &field.selection))
                    .collect(),
            ),
            "stock" => select(&cache::stock(id, incidents), &field.selection),
            scalar => product.get(scalar).cloned().unwrap_or(Value::Null),
        };
        out.insert(field.name.clone(), value);
    }
    Value::Object(out)
}

/// The selected fields of a subgraph object.
fn select(object: &Value, selection: &[Field]) -> Value {
    if selection.is_empty() {
        return object.clone();
    }
    let fields = selection.iter().map(|f| {
        (
            f.name.clone(),
            object.get(&f.name).cloned().unwrap_or(Value::Null),
        )
    });
    Value::Object(fields.collect())
}

static CATALOG: LazyLock<Vec<Value>> = LazyLock::new(|| {
    (0..CATALOG_SIZE)
        .map(|i| {
            json!({
                "id": format!("p{i}"),
                "name": format!("Product {i}"),
                "price": (i as f64 * 3.7) % 500.0 + 0.99,
                "description": format!("Product {i} is a well-made thing. ").repeat(6),
            })
        })
        .collect()
});

/// The products subgraph: the first `first` products of the catalog.
fn products_subgraph(first: usize) -> Vec<&'static Value> {
    CATALOG.iter().take(first).collect()
}

/// The reviews subgraph: the reviews of one product.
fn reviews_subgraph(product_id: &str) -> Vec<Value> {
    (0..REVIEWS_PER_PRODUCT)
        .map(|i| {
            json!({
                "author": format!("reviewer-{i}"),
                "rating": (product_id.len() + i) % 5 + 1,
                "body": format!("Review {i} of {product_id}: does what it says, arrived on time. ").repeat(3),
            })
        })
        .collect()
}

#[derive(Debug, PartialEq)]
enum Token {
    Name(String),
    Int(u64),
    Str(String),
    Punct(char),
}

fn tokenize(query: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = query.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() || c == ',' => {
                chars.next();
            }
            '{' | '}' | '(' | ')' | ':' => {
                tokens.push(Token::Punct(c));
                chars.next();
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => s.push(c),
                        None => return Err("unterminated string in query".into()),
                    }
                }
                tokens.push(Token::Str(s));
            }
            c if c.is_ascii_digit() => {
                let mut n = String::new();
                while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(d);
                    chars.next();
                }
                tokens.push(Token::Int(
                    n.parse().map_err(|_| format!("number {n} too large"))?,
                ));
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut name = String::new();
                while let Some(&d) = chars.peek().filter(|d| d.is_alphanumeric() || **d == '_') {
                    name.push(d);
                    chars.next();
                }
                tokens.push(Token::Name(name));
            }
            other => return Err(format!("unexpected character {other:?} in query")),
        }
    }
    Ok(tokens)
}

/// The operation's name, as routers label requests: the request's `operationName`, else the
/// name after `query` in the document (`query ProductsWithReviews { ... }`), else
/// `anonymous`.
pub fn operation_name(request: &Value, query: &str) -> String {
    if let Some(name) = request
        .get("operationName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return name.to_string();
    }
    match tokenize(query).ok().as_deref() {
        Some([Token::Name(keyword), Token::Name(name), ..]) if keyword == "query" => name.clone(),
        _ => "anonymous".to_string(),
    }
}

/// Parses `{ field(arg: 1) { sub } ... }`, optionally after `query` or `query Name`.
fn parse(query: &str) -> Result<Vec<Field>, String> {
    let tokens = tokenize(query)?;
    let mut pos = 0;
    if tokens.first() == Some(&Token::Name("query".into())) {
        pos = 1;
        if let Some(Token::Name(_)) = tokens.get(1) {
            pos = 2;
        }
    }
    let fields = parse_selection(&tokens, &mut pos)?;
    if pos != tokens.len() {
        return Err("unexpected text after the selection set".into());
    }
    Ok(fields)
}

fn parse_selection(tokens: &[Token], pos: &mut usize) -> Result<Vec<Field>, String> {
    if tokens.get(*pos) != Some(&Token::Punct('{')) {
        return Err("expected '{'".into());
    }
    *pos += 1;
    let mut fields = Vec::new();
    loop {
        match tokens.get(*pos) {
            Some(Token::Punct('}')) => {
                *pos += 1;
                return Ok(fields);
            }
            Some(Token::Name(name)) => {
                *pos += 1;
                let mut field = Field {
                    name: name.clone(),
                    args: Vec::new(),
                    selection: Vec::new(),
                };
                if tokens.get(*pos) == Some(&Token::Punct('(')) {
                    *pos += 1;
                    field.args = parse_args(tokens, pos)?;
                }
                if tokens.get(*pos) == Some(&Token::Punct('{')) {
                    field.selection = parse_selection(tokens, pos)?;
                }
                fields.push(field);
            }
            _ => return Err("expected a field name or '}'".into()),
        }
    }
}

fn parse_args(tokens: &[Token], pos: &mut usize) -> Result<Vec<(String, Value)>, String> {
    let mut args = Vec::new();
    loop {
        match (tokens.get(*pos), tokens.get(*pos + 1), tokens.get(*pos + 2)) {
            (Some(Token::Punct(')')), _, _) => {
                *pos += 1;
                return Ok(args);
            }
            (Some(Token::Name(name)), Some(Token::Punct(':')), Some(value)) => {
                let value = match value {
                    Token::Int(n) => Value::from(*n),
                    Token::Str(s) => Value::from(s.as_str()),
                    Token::Name(n) => Value::from(n.as_str()),
                    Token::Punct(p) => return Err(format!("expected a value, found '{p}'")),
                };
                args.push((name.clone(), value));
                *pos += 3;
            }
            _ => return Err("expected `name: value` or ')'".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE_QUERY: &str = "{ products(first: 20) { id name price description reviews { author rating body } stock { warehouse available } } }";

    #[test]
    fn sample_query_returns_products_with_reviews_and_stock() {
        let response = execute(SAMPLE_QUERY, Incidents::default());
        let products = response["data"]["products"].as_array().unwrap();
        assert_eq!(products.len(), 20);
        assert_eq!(products[3]["id"], "p3");
        assert_eq!(
            products[3]["reviews"].as_array().unwrap().len(),
            REVIEWS_PER_PRODUCT
        );
        assert!(products[3]["stock"]["available"].is_u64());
        assert!(response.get("errors").is_none());
    }

    #[test]
    fn operations_are_named_by_the_request_or_the_document() {
        let named = json!({"operationName": "GetUser"});
        assert_eq!(
            operation_name(&named, "query Other { products { id } }"),
            "GetUser"
        );
        let document = "query ProductsWithReviews { products(first: 1) { id } }";
        assert_eq!(operation_name(&json!({}), document), "ProductsWithReviews");
        assert_eq!(
            operation_name(&json!({}), "{ products { id } }"),
            "anonymous"
        );
        let data = execute(document, Incidents::default());
        assert_eq!(data["data"]["products"][0]["id"], "p0", "{data}");
    }

    #[test]
    fn unknown_fields_and_bad_syntax_are_graphql_errors() {
        let response = execute("{ users { id } }", Incidents::default());
        assert!(response["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("users"));
        let response = execute("{ products(first: ) }", Incidents::default());
        assert!(response["errors"][0]["message"].is_string());
    }
}
