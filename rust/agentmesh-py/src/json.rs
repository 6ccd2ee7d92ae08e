//! Python payload <-> plaintext payload bytes, without a round trip through Python's json
//! module. JSON types (dict with str keys, list/tuple, str, int within 64 bits, finite float,
//! bool, None) and binary values (bytes, bytearray; they come back as bytes) are accepted;
//! anything else is a TypeError that names the value and where it sits. How binary values are
//! laid out is the core's (`agentmesh_core::payload`): this file only converts objects.

use std::cell::RefCell;
use std::fmt::Write as _;

use agentmesh_core::payload::{self, Blobs, Payload, BYTES_REFERENCE_KEY};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::errors::to_py;

/// Deeper nesting than this is refused (JSON parsers commonly stop at 128 as well).
const MAX_DEPTH: usize = 128;

/// One step from the payload down to a value: written out only when an error names the value,
/// so a payload that serialises costs no formatting per key.
enum Step<'py> {
    Key(Bound<'py, PyString>),
    Index(usize),
}

fn where_(path: &[Step<'_>]) -> String {
    let mut s = String::from("payload");
    for step in path {
        let _ = match step {
            Step::Key(key) => match key.to_str() {
                Ok(key) => write!(s, "[{key:?}]"),
                Err(_) => write!(s, "[?]"),
            },
            Step::Index(i) => write!(s, "[{i}]"),
        };
    }
    s
}

fn bad_value(obj: &Bound<'_, PyAny>, path: &[Step<'_>], why: &str) -> PyErr {
    let type_name = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned());
    let mut shown = obj
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unrepresentable>".into());
    if shown.len() > 60 {
        let mut cut = 57;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        shown.push_str("...");
    }
    PyTypeError::new_err(format!(
        "{} is not JSON serializable: {} of type {} ({why})",
        where_(path),
        shown,
        type_name
    ))
}

/// The binary values of a payload being written, in reference order.
enum Blob<'py> {
    Bytes(Bound<'py, PyBytes>),
    /// A bytearray is copied when met: it could change while the payload is sealed.
    Copied(Vec<u8>),
}

impl Blob<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Blob::Bytes(b) => b.as_bytes(),
            Blob::Copied(v) => v,
        }
    }
}

/// A payload dict converted: its JSON (with a reference per binary value) and the binary
/// values, which stay in their Python objects until the core lays them out; so do long strings
/// that need no escaping (the JSON has their quotes, `spliced` says where their text goes).
pub struct Out<'py> {
    json: Vec<u8>,
    spliced: Vec<(usize, Bound<'py, PyString>)>,
    blobs: Vec<Blob<'py>>,
}

impl Out<'_> {
    /// The binary values in reference order (borrowed: they can be read with the GIL released).
    pub fn blobs(&self) -> Vec<&[u8]> {
        self.blobs.iter().map(Blob::as_slice).collect()
    }

    /// The JSON text in pieces, long strings borrowed where they are (read with the GIL
    /// released, as the blobs); empty when no string was left in place.
    pub fn pieces(&self) -> PyResult<Vec<&[u8]>> {
        if self.spliced.is_empty() {
            return Ok(Vec::new());
        }
        let mut pieces = Vec::with_capacity(2 * self.spliced.len() + 1);
        let mut from = 0;
        for (at, text) in &self.spliced {
            pieces.push(self.json.get(from..*at).unwrap_or_default());
            pieces.push(text.to_str()?.as_bytes());
            from = *at;
        }
        pieces.push(self.json.get(from..).unwrap_or_default());
        Ok(pieces)
    }

    /// The core's view of the payload, given its [`Out::pieces`] and [`Out::blobs`] (laid out
    /// by the core where it is sealed).
    pub fn payload<'a>(
        &'a self,
        pieces: &'a [&'a [u8]],
        blobs: &'a [&'a [u8]],
    ) -> PyResult<Payload<'a>> {
        if self.spliced.is_empty() {
            Payload::new(&self.json, blobs)
        } else {
            Payload::from_pieces(pieces, blobs)
        }
        .map_err(to_py)
    }

    /// Runs `f` on the core's view of the payload.
    pub fn with_payload<T>(&self, f: impl FnOnce(&Payload<'_>) -> T) -> PyResult<T> {
        let (pieces, blobs) = (self.pieces()?, self.blobs());
        Ok(f(&self.payload(&pieces, &blobs)?))
    }

    /// The plaintext form in one buffer.
    pub fn into_plaintext(self) -> PyResult<Vec<u8>> {
        let json = if self.spliced.is_empty() {
            std::borrow::Cow::Borrowed(&self.json)
        } else {
            std::borrow::Cow::Owned(self.pieces()?.concat())
        };
        let blobs = self.blobs();
        Ok(payload::encode(&json, &blobs).map_err(to_py)?.into_owned())
    }
}

/// Converts a payload dict: compact JSON, and its binary values apart.
pub fn payload_to_parts<'py>(payload: &Bound<'py, PyAny>) -> PyResult<Out<'py>> {
    let dict = payload.downcast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!(
            "payload must be a dict, got {}",
            payload
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    let mut out = Out {
        json: Vec::with_capacity(64),
        spliced: Vec::new(),
        blobs: Vec::new(),
    };
    let mut path = Vec::new();
    write_dict(dict, &mut out, &mut path)?;
    Ok(out)
}

/// Serialises a payload dict to its plaintext form: compact JSON, framed by the core when it
/// holds binary values.
pub fn payload_to_plaintext(payload: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    payload_to_parts(payload)?.into_plaintext()
}

/// Bytes JSON requires escaped inside a string (serde_json escapes exactly these too).
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Scanned in blocks with a branch-free test (it vectorises), so clean text -- nearly every
/// payload -- is copied in whole runs; a 1 MiB string costs a scan and a memcpy.
const SCAN_BLOCK: usize = 64;

fn write_escape(b: u8, out: &mut Vec<u8>) {
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => {
            let _ = write!(Utf8Sink(out), "\\u{b:04x}");
        }
    }
}

/// Room reserved past a long string for what usually follows it (closing brackets), so a
/// megabyte string is not copied again when the buffer grows by a byte; short ones get none
/// (the buffer's first capacity holds a small payload whole).
const LONG_STR: usize = 4096;
const LONG_STR_SLACK: usize = 64;

/// Strings at least this long that need no escaping are not copied into the JSON buffer: the
/// core copies them once, straight into the envelope.
const LEAVE_IN_PLACE: usize = 16 * 1024;

fn is_clean(block: &[u8]) -> bool {
    !block
        .iter()
        .fold(false, |dirty, &b| dirty | needs_escape(b))
}

fn write_str_value<'py>(s: &Bound<'py, PyString>, out: &mut Out<'py>) -> PyResult<()> {
    let text = s.to_str()?;
    if text.len() >= LEAVE_IN_PLACE && text.as_bytes().chunks(SCAN_BLOCK).all(is_clean) {
        out.json.push(b'"');
        out.spliced.push((out.json.len(), s.clone()));
        out.json.push(b'"');
        return Ok(());
    }
    write_str(text, &mut out.json)
}

fn write_str(s: &str, out: &mut Vec<u8>) -> PyResult<()> {
    let bytes = s.as_bytes();
    let slack = if bytes.len() >= LONG_STR {
        LONG_STR_SLACK
    } else {
        0
    };
    out.reserve(bytes.len() + 2 + slack);
    out.push(b'"');
    let mut clean_from = 0;
    for (block_index, block) in bytes.chunks(SCAN_BLOCK).enumerate() {
        if is_clean(block) {
            continue;
        }
        let base = block_index * SCAN_BLOCK;
        for (offset, &b) in block.iter().enumerate() {
            if needs_escape(b) {
                out.extend_from_slice(bytes.get(clean_from..base + offset).unwrap_or_default());
                write_escape(b, out);
                clean_from = base + offset + 1;
            }
        }
    }
    out.extend_from_slice(bytes.get(clean_from..).unwrap_or_default());
    out.push(b'"');
    Ok(())
}

fn write_dict<'py>(
    dict: &Bound<'py, PyDict>,
    out: &mut Out<'py>,
    path: &mut Vec<Step<'py>>,
) -> PyResult<()> {
    if path.len() >= MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "{} is nested deeper than {MAX_DEPTH} levels",
            where_(path)
        )));
    }
    out.json.push(b'{');
    for (i, (k, v)) in dict.iter().enumerate() {
        if i > 0 {
            out.json.push(b',');
        }
        let key = k
            .downcast::<PyString>()
            .map_err(|_| bad_value(&k, path, "dict keys must be str"))?;
        let key_str = key.to_str()?;
        if key_str == BYTES_REFERENCE_KEY {
            return Err(PyValueError::new_err(format!(
                "{} uses the key {BYTES_REFERENCE_KEY:?}, which is reserved for binary values",
                where_(path)
            )));
        }
        write_str(key_str, &mut out.json)?;
        out.json.push(b':');
        path.push(Step::Key(key.clone()));
        write_value(&v, out, path)?;
        path.pop();
    }
    out.json.push(b'}');
    Ok(())
}

fn write_seq<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    out: &mut Out<'py>,
    path: &mut Vec<Step<'py>>,
) -> PyResult<()> {
    if path.len() >= MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "{} is nested deeper than {MAX_DEPTH} levels",
            where_(path)
        )));
    }
    out.json.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.json.push(b',');
        }
        path.push(Step::Index(i));
        write_value(&item, out, path)?;
        path.pop();
    }
    out.json.push(b']');
    Ok(())
}

fn write_value<'py>(
    v: &Bound<'py, PyAny>,
    out: &mut Out<'py>,
    path: &mut Vec<Step<'py>>,
) -> PyResult<()> {
    if let Ok(s) = v.downcast::<PyString>() {
        return write_str_value(s, out);
    }
    write_scalar(v, out, path)
}

fn write_scalar<'py>(
    v: &Bound<'py, PyAny>,
    out: &mut Out<'py>,
    path: &mut Vec<Step<'py>>,
) -> PyResult<()> {
    if v.is_none() {
        out.json.extend_from_slice(b"null");
        return Ok(());
    }
    if let Ok(b) = v.downcast::<PyBool>() {
        out.json
            .extend_from_slice(if b.is_true() { b"true" } else { b"false" });
        return Ok(());
    }
    if v.is_instance_of::<PyInt>() {
        if let Ok(i) = v.extract::<i64>() {
            let _ = write!(Utf8Sink(&mut out.json), "{i}");
            return Ok(());
        }
        if let Ok(u) = v.extract::<u64>() {
            let _ = write!(Utf8Sink(&mut out.json), "{u}");
            return Ok(());
        }
        return Err(bad_value(v, path, "integers must fit in 64 bits"));
    }
    if let Ok(f) = v.downcast::<PyFloat>() {
        let x = f.value();
        if !x.is_finite() {
            return Err(bad_value(v, path, "NaN and infinity are not JSON"));
        }
        return serde_json::to_writer(&mut out.json, &x)
            .map_err(|e| PyValueError::new_err(e.to_string()));
    }
    if let Ok(d) = v.downcast::<PyDict>() {
        return write_dict(d, out, path);
    }
    if let Ok(l) = v.downcast::<PyList>() {
        return write_seq(l.iter(), out, path);
    }
    if let Ok(t) = v.downcast::<PyTuple>() {
        return write_seq(t.iter(), out, path);
    }
    let blob = if let Ok(b) = v.downcast::<PyBytes>() {
        Blob::Bytes(b.clone())
    } else if let Ok(b) = v.downcast::<PyByteArray>() {
        Blob::Copied(b.to_vec())
    } else {
        return Err(bad_value(
            v,
            path,
            "only dict, list, tuple, str, int, float, bool, None, bytes and bytearray are",
        ));
    };
    payload::write_reference(&mut out.json, out.blobs.len());
    out.blobs.push(blob);
    Ok(())
}

struct Utf8Sink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8Sink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Parses a plaintext payload straight into Python objects (dict order preserved): its JSON,
/// with each reference of a framed payload replaced by its binary value as `bytes`.
pub fn plaintext_to_py<'py>(py: Python<'py>, plaintext: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let parts = payload::decode(plaintext).map_err(to_py)?;
    let framing = Framing {
        blobs: RefCell::new(parts.blobs),
        problem: RefCell::new(None),
    };
    let mut de = serde_json::Deserializer::from_slice(parts.json);
    let parsed = PySeed {
        py,
        framing: &framing,
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    if let Some(problem) = framing.problem.take() {
        return Err(to_py(problem));
    }
    let value =
        parsed.map_err(|e| PyValueError::new_err(format!("payload is not valid JSON: {e}")))?;
    framing.blobs.borrow().finish().map_err(to_py)?;
    Ok(value)
}

/// The blobs of the payload being parsed, and the framing problem that stopped it, if any
/// (reported as the core's error rather than as invalid JSON).
struct Framing<'a> {
    blobs: RefCell<Blobs<'a>>,
    problem: RefCell<Option<agentmesh_core::Error>>,
}

impl Framing<'_> {
    fn fail<E: serde::de::Error>(&self, problem: agentmesh_core::Error) -> E {
        let err = E::custom(&problem);
        *self.problem.borrow_mut() = Some(problem);
        err
    }
}

#[derive(Clone, Copy)]
struct PySeed<'py, 'a> {
    py: Python<'py>,
    framing: &'a Framing<'a>,
}

impl<'de, 'py> DeserializeSeed<'de> for PySeed<'py, '_> {
    type Value = Bound<'py, PyAny>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

fn de_err<E: serde::de::Error>(e: PyErr) -> E {
    E::custom(e.to_string())
}

impl<'de, 'py> Visitor<'de> for PySeed<'py, '_> {
    type Value = Bound<'py, PyAny>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(PyBool::new(self.py, v).to_owned().into_any())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        match v.into_pyobject(self.py) {
            Ok(b) => Ok(b.into_any()),
            Err(never) => match never {},
        }
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        match v.into_pyobject(self.py) {
            Ok(b) => Ok(b.into_any()),
            Err(never) => match never {},
        }
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(PyFloat::new(self.py, v).into_any())
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(PyString::new(self.py, v).into_any())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.py.None().into_bound(self.py))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.visit_unit()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let list = PyList::empty(self.py);
        while let Some(item) = seq.next_element_seed(self)? {
            list.append(item).map_err(de_err)?;
        }
        Ok(list.into_any())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let dict = PyDict::new(self.py);
        let framed = self.framing.blobs.borrow().framed();
        let mut first = true;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if framed && key == BYTES_REFERENCE_KEY {
                if !first {
                    return Err(self.framing.fail(payload::malformed_reference()));
                }
                return self.reference(map);
            }
            first = false;
            let value = map.next_value_seed(self)?;
            dict.set_item(PyString::new(self.py, &key), value)
                .map_err(de_err)?;
        }
        Ok(dict.into_any())
    }
}

impl<'py> PySeed<'py, '_> {
    /// The rest of a reference object (its key read): its index, then nothing else.
    fn reference<'de, A: MapAccess<'de>>(self, mut map: A) -> Result<Bound<'py, PyAny>, A::Error> {
        let index = map
            .next_value::<u64>()
            .map_err(|_| self.framing.fail(payload::malformed_reference()))?;
        if map
            .next_key::<serde::de::IgnoredAny>()
            .map_err(|_| self.framing.fail(payload::malformed_reference()))?
            .is_some()
        {
            return Err(self.framing.fail(payload::malformed_reference()));
        }
        let taken = self.framing.blobs.borrow_mut().take(index);
        let blob = taken.map_err(|e| self.framing.fail(e))?;
        Ok(PyBytes::new(self.py, blob).into_any())
    }
}
