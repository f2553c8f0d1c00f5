//! How CloudEvents attributes are kept in a store column: one JSON object. Shared by
//! every backend so that they read each other's rows the same way.

use std::collections::BTreeMap;

use herald_core::{CloudEventAttributes, DataForm, ExtensionValue, TraceContext};
use serde_json::{json, Map, Value};

/// An event's stored trace context (the `traceparent` and `tracestate` columns). What
/// the store holds was validated on the way in; a value that no longer reads as one is
/// dropped, as the spec says of an invalid `traceparent`, rather than failing the row.
pub fn decode_trace(
    traceparent: Option<String>,
    tracestate: Option<String>,
) -> Option<Box<TraceContext>> {
    TraceContext::parse(&traceparent?, tracestate.as_deref()).map(Box::new)
}

/// Encodes the attributes as the JSON text a store keeps.
pub fn encode_cloudevent(attributes: &CloudEventAttributes) -> String {
    let extensions: Map<String, Value> = attributes
        .extensions
        .iter()
        .map(|(name, value)| {
            let value = match value {
                ExtensionValue::String(s) => Value::String(s.clone()),
                ExtensionValue::Integer(i) => Value::from(*i),
                ExtensionValue::Boolean(b) => Value::Bool(*b),
            };
            (name.clone(), value)
        })
        .collect();
    json!({
        "id": attributes.id,
        "source": attributes.source,
        "specversion": attributes.specversion,
        "type": attributes.ty,
        "subject": attributes.subject,
        "time": attributes.time,
        "datacontenttype": attributes.datacontenttype,
        "dataschema": attributes.dataschema,
        "extensions": extensions,
        "data_form": attributes.data_form.as_str(),
    })
    .to_string()
}

/// Why stored CloudEvents attributes cannot be read back (the row is corrupt).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloudEventCodecError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("cloudevent attribute `{0}` is missing")]
    Missing(String),
    #[error("extension `{0}` is not an integer")]
    ExtensionNotInteger(String),
    #[error("extension `{0}` has an unsupported type")]
    ExtensionType(String),
    #[error("cloudevent `data_form` is missing or unknown")]
    DataForm,
}

/// Decodes what [`encode_cloudevent`] wrote.
pub fn decode_cloudevent(text: &str) -> Result<CloudEventAttributes, CloudEventCodecError> {
    let value: Value = serde_json::from_str(text)?;
    let string = |name: &str| -> Result<String, CloudEventCodecError> {
        value[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| CloudEventCodecError::Missing(name.to_owned()))
    };
    let optional = |name: &str| value[name].as_str().map(str::to_owned);
    let mut extensions = BTreeMap::new();
    if let Some(map) = value["extensions"].as_object() {
        for (name, v) in map {
            let v = match v {
                Value::String(s) => ExtensionValue::String(s.clone()),
                Value::Bool(b) => ExtensionValue::Boolean(*b),
                Value::Number(n) => ExtensionValue::Integer(
                    n.as_i64()
                        .ok_or_else(|| CloudEventCodecError::ExtensionNotInteger(name.clone()))?,
                ),
                _ => return Err(CloudEventCodecError::ExtensionType(name.clone())),
            };
            extensions.insert(name.clone(), v);
        }
    }
    Ok(CloudEventAttributes {
        id: string("id")?,
        source: string("source")?,
        specversion: string("specversion")?,
        ty: string("type")?,
        subject: optional("subject"),
        time: optional("time"),
        datacontenttype: optional("datacontenttype"),
        dataschema: optional("dataschema"),
        extensions,
        data_form: value["data_form"]
            .as_str()
            .and_then(DataForm::parse)
            .ok_or(CloudEventCodecError::DataForm)?,
    })
}
