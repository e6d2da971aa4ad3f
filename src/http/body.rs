//! Reading request bodies and parameters into typed values, with errors in ember's JSON shape.
//!
//! axum's own extractors answer rejections in plain text; ember reads bodies itself so every failure is an
//! `ApiError` that names the field and the limit.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::service::{ApiError, BodyLimit};

const IMAGE_FIELD: &str = "image";
const ACCEPTED_IMAGE_BODIES: &str =
    "send the image as raw bytes with Content-Type image/*, as multipart/form-data with a file field `image`, \
     or as application/json with a base64 string field `image`";

/// JSON bodies above this size are parsed on the blocking pool: parsing takes about a millisecond per 100 KB.
const PARSE_OFF_RUNTIME_BYTES: usize = 64 * 1024;

/// An uploaded image and the request's other parameters (query string, multipart text fields, JSON fields).
pub struct ImageUpload {
    pub image: Bytes,
    pub params: Map<String, Value>,
}

impl ImageUpload {
    /// The parameters as a typed struct; see [`parse_params`].
    pub fn params<P: DeserializeOwned>(&self) -> Result<P, ApiError> {
        parse_params(self.params.clone())
    }
}

/// Deserialises parameters into `P`; a wrong type or an unknown name is a 422 naming the field.
pub fn parse_params<P: DeserializeOwned>(params: Map<String, Value>) -> Result<P, ApiError> {
    serde_path_to_error::deserialize(Value::Object(params)).map_err(|e| invalid_field(e.path(), e.inner()))
}

/// A 422 for a value of the wrong type or an unknown name, naming the field (none for the whole body).
fn invalid_field(path: &serde_path_to_error::Path, error: impl std::fmt::Display) -> ApiError {
    match path.to_string().as_str() {
        "." => ApiError::validation(error.to_string()),
        field => ApiError::validation(format!("{field}: {error}")),
    }
}

/// Reads an image from any of the three accepted body shapes. Body fields override query parameters.
pub async fn read_image_upload(request: Request, limit: BodyLimit) -> Result<ImageUpload, ApiError> {
    let (parts, body) = request.into_parts();
    let mut params = query_params(parts.uri.query())?;
    let content_type = content_type(&parts.headers, ACCEPTED_IMAGE_BODIES)?;
    let body = read_limited(body, &parts.headers, limit).await?;
    let image = match (content_type.type_(), content_type.subtype()) {
        (mime::IMAGE, _) => body,
        (mime::MULTIPART, mime::FORM_DATA) => {
            let [image] =
                read_multipart(body, &content_type, [IMAGE_FIELD], ACCEPTED_IMAGE_BODIES, &mut params).await?;
            image
        }
        (mime::APPLICATION, mime::JSON) => {
            let (image, fields) = parse_sized(body, |body| read_json_image(&body)).await?;
            params.extend(fields);
            image
        }
        _ => {
            return Err(ApiError::unsupported_media_type(format!(
                "Content-Type `{content_type}` is not accepted here: {ACCEPTED_IMAGE_BODIES}"
            )))
        }
    };
    if image.is_empty() {
        return Err(ApiError::bad_request("the image is empty (0 bytes)"));
    }
    Ok(ImageUpload { image, params })
}

/// Reads a JSON object body into `P`, parsed straight into the type (off the async workers when large).
/// `shape` describes the expected body for the 415 a non-JSON request gets.
pub async fn read_json_body<P: DeserializeOwned + Send + 'static>(
    request: Request,
    limit: BodyLimit,
    shape: &str,
) -> Result<P, ApiError> {
    let (parts, body) = request.into_parts();
    let accepted = format!("this route takes Content-Type application/json with a body like {shape}");
    let content_type = content_type(&parts.headers, &accepted)?;
    if (content_type.type_(), content_type.subtype()) != (mime::APPLICATION, mime::JSON) {
        return Err(ApiError::unsupported_media_type(format!("Content-Type `{content_type}`: {accepted}")));
    }
    let body = read_limited(body, &parts.headers, limit).await?;
    parse_sized(body, |body| parse_json(&body)).await
}

/// Runs `parse` on the body here when it is small, else on the blocking pool.
async fn parse_sized<T: Send + 'static>(
    body: Bytes,
    parse: impl FnOnce(Bytes) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if body.len() <= PARSE_OFF_RUNTIME_BYTES {
        return parse(body);
    }
    crate::service::offload::decoding("parsing the request body", move || parse(body)).await
}

/// Parses a JSON object body straight into `P`. Syntax errors are 400; a body that is valid JSON but not an
/// object, a wrong type or an unknown field is a 422 naming the field.
pub fn parse_json<P: DeserializeOwned>(body: &[u8]) -> Result<P, ApiError> {
    if let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace()).filter(|b| **b != b'{') {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => Err(ApiError::validation(format!(
                "the JSON body must be an object, got {}",
                json_kind_of_first_byte(*first)
            ))),
            Err(e) => Err(ApiError::bad_request(format!("the body is not valid JSON: {e}"))),
        };
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| match e.inner().classify() {
        serde_json::error::Category::Data => invalid_field(e.path(), e.inner()),
        _ => ApiError::bad_request(format!("the body is not valid JSON: {}", e.inner())),
    })?;
    deserializer.end().map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    Ok(parsed)
}

fn json_kind_of_first_byte(byte: u8) -> &'static str {
    match byte {
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    }
}

/// The request's Content-Type; a missing one is a 415 that says what the route `accepted`.
fn content_type(headers: &HeaderMap, accepted: &str) -> Result<mime::Mime, ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .ok_or_else(|| ApiError::unsupported_media_type(format!("the request has no Content-Type: {accepted}")))?;
    value
        .to_str()
        .ok()
        .and_then(|s| s.parse::<mime::Mime>().ok())
        .ok_or_else(|| ApiError::unsupported_media_type(format!("Content-Type `{value:?}` cannot be parsed")))
}

/// Reads at most `limit.max_bytes` bytes within `limit.read_timeout`; a larger body (announced or actual) is a
/// 413, a slower one a 408.
pub async fn read_limited(body: Body, headers: &HeaderMap, limit: BodyLimit) -> Result<Bytes, ApiError> {
    let (size_flag, time_flag) = limit.flags.names();
    let max = limit.max_bytes;
    let too_large = || {
        ApiError::payload_too_large(format!("the request body is larger than the limit of {max} bytes ({size_flag})"))
    };
    let announced =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > max as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(limit.read_timeout, Limited::new(body, max).collect()).await {
        Err(_) => Err(ApiError::request_timeout(format!(
            "the request body did not arrive within {} ms ({time_flag})",
            limit.read_timeout.as_millis()
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(format!("cannot read the request body: {e}"))),
    }
}

/// Query parameters as JSON values: numbers and booleans are recognised, everything else stays a string.
pub fn query_params(query: Option<&str>) -> Result<Map<String, Value>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("cannot parse the query string: {e}")))?;
    Ok(pairs.into_iter().map(|(name, value)| (name, text_value(value))).collect())
}

fn text_value(text: String) -> Value {
    serde_json::from_str::<Value>(&text).ok().filter(|v| v.is_number() || v.is_boolean()).unwrap_or(Value::String(text))
}

/// Reads a multipart body: the parts named in `files` as bytes, in that order (each one required; `accepted`
/// says what the route takes when one is missing), and every other part as a text parameter.
pub async fn read_multipart<const N: usize>(
    body: Bytes,
    content_type: &mime::Mime,
    files: [&str; N],
    accepted: &str,
    params: &mut Map<String, Value>,
) -> Result<[Bytes; N], ApiError> {
    let boundary = multer::parse_boundary(content_type.as_ref())
        .map_err(|e| ApiError::bad_request(format!("multipart body without a usable boundary: {e}")))?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let malformed = |e: multer::Error| ApiError::bad_request(format!("malformed multipart body: {e}"));
    let mut found: [Option<Bytes>; N] = std::array::from_fn(|_| None);
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_string();
        let data = field.bytes().await.map_err(malformed)?;
        if let Some(slot) = files.iter().position(|file| *file == name) {
            found[slot] = Some(data);
        } else {
            let text = String::from_utf8(data.to_vec())
                .map_err(|_| ApiError::validation(format!("multipart field `{name}` must be UTF-8 text")))?;
            params.insert(name, text_value(text));
        }
    }
    for (name, data) in files.iter().zip(&found) {
        match data {
            None => return Err(ApiError::bad_request(format!("the multipart body has no field `{name}`: {accepted}"))),
            Some(data) if data.is_empty() => {
                return Err(ApiError::bad_request(format!("the file `{name}` is empty (0 bytes)")))
            }
            Some(_) => {}
        }
    }
    Ok(found.map(Option::unwrap_or_default)) // every one is Some: checked above
}

/// Images uploaded as the multipart/form-data file fields `files` (all required), with the request's other
/// parameters (query string and text fields; fields override the query).
pub async fn read_multipart_images<const N: usize>(
    request: Request,
    limit: BodyLimit,
    files: [&str; N],
) -> Result<([Bytes; N], Map<String, Value>), ApiError> {
    let (parts, body) = request.into_parts();
    let names = files.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(" and ");
    let accepted = format!("send multipart/form-data with the image files {names}");
    let mut params = query_params(parts.uri.query())?;
    let content_type = content_type(&parts.headers, &accepted)?;
    if (content_type.type_(), content_type.subtype()) != (mime::MULTIPART, mime::FORM_DATA) {
        return Err(ApiError::unsupported_media_type(format!("Content-Type `{content_type}`: {accepted}")));
    }
    let body = read_limited(body, &parts.headers, limit).await?;
    let images = read_multipart(body, &content_type, files, &accepted, &mut params).await?;
    Ok((images, params))
}

/// A JSON image body: the base64 `image` and the other fields as parameters.
#[derive(serde::Deserialize)]
struct JsonImage {
    image: Option<Value>,
    #[serde(flatten)]
    params: Map<String, Value>,
}

pub fn read_json_image(body: &[u8]) -> Result<(Bytes, Map<String, Value>), ApiError> {
    let JsonImage { image, params } = parse_json(body)?;
    let encoded = match image {
        Some(Value::String(text)) => text,
        Some(other) => {
            return Err(ApiError::validation(format!("image: expected a base64 string, got {}", json_kind(&other))))
        }
        None => {
            return Err(ApiError::validation(format!("image: required field is missing ({ACCEPTED_IMAGE_BODIES})")))
        }
    };
    // Accept data URLs (`data:image/png;base64,...`) as browsers produce them.
    let payload = encoded.split_once(";base64,").map_or(encoded.as_str(), |(_, data)| data);
    let image = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| ApiError::validation(format!("image: not valid base64: {e}")))?;
    Ok((Bytes::from(image), params))
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::service::BodyFlags;
    use crate::service::ErrorKind;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Params {
        top_k: Option<i64>,
    }

    #[test]
    fn query_numbers_become_numbers_and_wrong_types_name_the_field() {
        let params: Params = parse_params(query_params(Some("top_k=3")).unwrap()).unwrap();
        assert_eq!(params.top_k, Some(3));
        let err = parse_params::<Params>(query_params(Some("top_k=three")).unwrap()).unwrap_err();
        assert!(
            matches!(&err, ApiError { kind: ErrorKind::Validation, message: m, .. } if m.starts_with("top_k:")),
            "{err:?}"
        );
        let err = parse_params::<Params>(query_params(Some("topk=3")).unwrap()).unwrap_err();
        assert!(err.to_string().contains("unknown field `topk`"), "{err}");
    }

    #[test]
    fn json_image_accepts_plain_base64_and_data_urls() {
        let (image, params) = read_json_image(br#"{"image": "aGVsbG8=", "top_k": 2}"#).unwrap();
        assert_eq!(&image[..], b"hello");
        assert_eq!(params.get("top_k"), Some(&Value::from(2)));
        let (image, _) = read_json_image(br#"{"image": "data:image/png;base64,aGVsbG8="}"#).unwrap();
        assert_eq!(&image[..], b"hello");
    }

    #[test]
    fn json_errors_distinguish_syntax_from_content() {
        assert!(matches!(read_json_image(b"{\"image\": "), Err(ApiError { kind: ErrorKind::BadRequest, .. })));
        assert!(matches!(read_json_image(b"[1]"), Err(ApiError { kind: ErrorKind::Validation, .. })));
        assert!(matches!(read_json_image(br#"{"image": 5}"#), Err(ApiError { kind: ErrorKind::Validation, .. })));
        assert!(matches!(read_json_image(br#"{"image": "%%%"}"#), Err(ApiError { kind: ErrorKind::Validation, .. })));
        assert!(matches!(
            read_json_image(br#"{"image": "aGVsbG8="} trailing"#),
            Err(ApiError { kind: ErrorKind::BadRequest, .. })
        ));
    }

    #[test]
    fn typed_json_names_the_field_and_tells_syntax_from_content() {
        let ok: Params = parse_json(br#"{"top_k": 3}"#).unwrap();
        assert_eq!(ok.top_k, Some(3));
        let err = parse_json::<Params>(br#"{"top_k": "three"}"#).unwrap_err();
        assert!(
            matches!(&err, ApiError { kind: ErrorKind::Validation, message: m, .. } if m.starts_with("top_k:")),
            "{err:?}"
        );
        let err = parse_json::<Params>(br#"{"topk": 3}"#).unwrap_err();
        assert!(
            matches!(&err, ApiError { kind: ErrorKind::Validation, message: m, .. } if m.contains("unknown field `topk`")),
            "{err:?}"
        );
        for (body, kind) in
            [(&b"[1, 2]"[..], "an array"), (b" 7", "a number"), (b"null", "null"), (b"\"x\"", "a string")]
        {
            let err = parse_json::<Params>(body).unwrap_err();
            assert!(
                matches!(&err, ApiError { kind: ErrorKind::Validation, message: m, .. } if m.ends_with(kind)),
                "{err:?}"
            );
        }
        for body in [&b"{\"top_k\": "[..], b"", b"[1,", b"{} {}"] {
            assert!(
                matches!(parse_json::<Params>(body), Err(ApiError { kind: ErrorKind::BadRequest, .. })),
                "{body:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_stalled_body_is_cut_off_and_an_oversized_one_refused() {
        let limit = BodyLimit { max_bytes: 10, read_timeout: Duration::from_millis(50), flags: BodyFlags::Request };
        let body = Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        let err = read_limited(body, &HeaderMap::new(), limit).await.unwrap_err();
        assert!(
            matches!(&err, ApiError { kind: ErrorKind::RequestTimeout, message: m, .. } if m.contains("--body-read-timeout-ms")),
            "{err:?}"
        );
        let err = read_limited(Body::from(vec![0u8; 11]), &HeaderMap::new(), limit).await.unwrap_err();
        assert!(
            matches!(&err, ApiError { kind: ErrorKind::PayloadTooLarge, message: m, .. } if m.contains("--max-body-bytes")),
            "{err:?}"
        );
        let upload = BodyLimit { flags: BodyFlags::Upload, ..limit };
        let err = read_limited(Body::from(vec![0u8; 11]), &HeaderMap::new(), upload).await.unwrap_err();
        assert!(
            matches!(&err, ApiError { kind: ErrorKind::PayloadTooLarge, message: m, .. } if m.contains("--max-upload-bytes")),
            "{err:?}"
        );
        assert_eq!(&read_limited(Body::from("0123456789"), &HeaderMap::new(), limit).await.unwrap()[..], b"0123456789");
    }
}
