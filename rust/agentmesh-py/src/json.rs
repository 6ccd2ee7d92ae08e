//! Python payload <-> JSON bytes, without a round trip through Python's json module. Only JSON
//! types are accepted (dict with str keys, list/tuple, str, int within 64 bits, finite float,
//! bool, None); anything else is a TypeError that names the value and where it sits.

use std::fmt::Write as _;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deeper nesting than this is refused (JSON parsers commonly stop at 128 as well).
const MAX_DEPTH: usize = 128;

fn where_(path: &[String]) -> String {
    let mut s = String::from("payload");
    for p in path {
        s.push_str(p);
    }
    s
}

fn bad_value(obj: &Bound<'_, PyAny>, path: &[String], why: &str) -> PyErr {
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

/// Serialises a payload dict to compact JSON.
pub fn payload_to_json(payload: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
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
    let mut out = Vec::with_capacity(64);
    let mut path = Vec::new();
    write_dict(dict, &mut out, &mut path)?;
    Ok(out)
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

fn write_str(s: &str, out: &mut Vec<u8>) -> PyResult<()> {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut clean_from = 0;
    for (block_index, block) in bytes.chunks(SCAN_BLOCK).enumerate() {
        if !block
            .iter()
            .fold(false, |dirty, &b| dirty | needs_escape(b))
        {
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

fn write_dict(dict: &Bound<'_, PyDict>, out: &mut Vec<u8>, path: &mut Vec<String>) -> PyResult<()> {
    if path.len() >= MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "{} is nested deeper than {MAX_DEPTH} levels",
            where_(path)
        )));
    }
    out.push(b'{');
    for (i, (k, v)) in dict.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let key = k
            .downcast::<PyString>()
            .map_err(|_| bad_value(&k, path, "dict keys must be str"))?;
        let key = key.to_str()?;
        write_str(key, out)?;
        out.push(b':');
        path.push(format!("[{key:?}]"));
        write_value(&v, out, path)?;
        path.pop();
    }
    out.push(b'}');
    Ok(())
}

fn write_seq<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    out: &mut Vec<u8>,
    path: &mut Vec<String>,
) -> PyResult<()> {
    if path.len() >= MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "{} is nested deeper than {MAX_DEPTH} levels",
            where_(path)
        )));
    }
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        path.push(format!("[{i}]"));
        write_value(&item, out, path)?;
        path.pop();
    }
    out.push(b']');
    Ok(())
}

fn write_value(v: &Bound<'_, PyAny>, out: &mut Vec<u8>, path: &mut Vec<String>) -> PyResult<()> {
    if let Ok(s) = v.downcast::<PyString>() {
        return write_str(s.to_str()?, out);
    }
    if v.is_none() {
        out.extend_from_slice(b"null");
        return Ok(());
    }
    if let Ok(b) = v.downcast::<PyBool>() {
        out.extend_from_slice(if b.is_true() { b"true" } else { b"false" });
        return Ok(());
    }
    if v.is_instance_of::<PyInt>() {
        if let Ok(i) = v.extract::<i64>() {
            let _ = write!(Utf8Sink(out), "{i}");
            return Ok(());
        }
        if let Ok(u) = v.extract::<u64>() {
            let _ = write!(Utf8Sink(out), "{u}");
            return Ok(());
        }
        return Err(bad_value(v, path, "integers must fit in 64 bits"));
    }
    if let Ok(f) = v.downcast::<PyFloat>() {
        let x = f.value();
        if !x.is_finite() {
            return Err(bad_value(v, path, "NaN and infinity are not JSON"));
        }
        return serde_json::to_writer(&mut *out, &x)
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
    Err(bad_value(
        v,
        path,
        "only dict, list, tuple, str, int, float, bool and None are",
    ))
}

struct Utf8Sink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8Sink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Parses JSON bytes straight into Python objects (dict order preserved).
pub fn json_to_py<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let value = PySeed(py)
        .deserialize(&mut de)
        .map_err(|e| PyValueError::new_err(format!("payload is not valid JSON: {e}")))?;
    de.end()
        .map_err(|e| PyValueError::new_err(format!("payload is not valid JSON: {e}")))?;
    Ok(value)
}

#[derive(Clone, Copy)]
struct PySeed<'py>(Python<'py>);

impl<'de, 'py> DeserializeSeed<'de> for PySeed<'py> {
    type Value = Bound<'py, PyAny>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

fn de_err<E: serde::de::Error>(e: PyErr) -> E {
    E::custom(e.to_string())
}

impl<'de, 'py> Visitor<'de> for PySeed<'py> {
    type Value = Bound<'py, PyAny>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(PyBool::new(self.0, v).to_owned().into_any())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        match v.into_pyobject(self.0) {
            Ok(b) => Ok(b.into_any()),
            Err(never) => match never {},
        }
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        match v.into_pyobject(self.0) {
            Ok(b) => Ok(b.into_any()),
            Err(never) => match never {},
        }
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(PyFloat::new(self.0, v).into_any())
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(PyString::new(self.0, v).into_any())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.0.None().into_bound(self.0))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.visit_unit()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let list = PyList::empty(self.0);
        while let Some(item) = seq.next_element_seed(self)? {
            list.append(item).map_err(de_err)?;
        }
        Ok(list.into_any())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let dict = PyDict::new(self.0);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value = map.next_value_seed(self)?;
            dict.set_item(PyString::new(self.0, &key), value)
                .map_err(de_err)?;
        }
        Ok(dict.into_any())
    }
}
