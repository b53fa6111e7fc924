// CTOML: Debian's toml++ (libtomlplusplus-dev, used header-only) behind a plain C interface.
//
// Swift needs from a TOML parser what toml++ already knows: every key and value with the
// line and column where it starts, and on a syntax error toml++'s own description and place.
// A C interface gives Swift that without C++ interop, and keeps every C++ exception on the
// C++ side. One call parses a buffer into a flat list of entries; one call frees all of it.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__has_attribute) && __has_attribute(enum_extensibility)
#define CTOML_CLOSED_ENUM __attribute__((enum_extensibility(closed)))  // a Swift enum, switched exhaustively
#else
#define CTOML_CLOSED_ENUM
#endif

/// What an entry holds: TOML's kinds of value, as toml++ tells them apart.
typedef enum CTOML_CLOSED_ENUM ctoml_kind {
    CTOML_TABLE,
    CTOML_ARRAY,
    CTOML_STRING,
    CTOML_INTEGER,
    CTOML_FLOAT,
    CTOML_BOOLEAN,
    CTOML_DATE,
    CTOML_TIME,
    CTOML_DATE_TIME,
} ctoml_kind;

/// A place in the text, as toml++ counts it: line and column from 1, a column being one
/// Unicode scalar (a tab is one, a CR is one). Line 0 means "no such place".
typedef struct ctoml_position {
    uint32_t line;
    uint32_t column;
} ctoml_position;

/// One table, array or value of the document.
///
/// Entries come parent first (an entry's parent has a smaller index); the document's root
/// table is not an entry. Within a table, toml++ keeps no file order: key_position gives it.
typedef struct ctoml_entry {
    /// The index of the table or array this entry is in, or -1 for the root table.
    int32_t parent;
    /// The entry's index in its parent array, or -1 when its parent is a table.
    int32_t element;
    /// The entry's key in its parent table (UTF-8, not NUL-terminated), or NULL in an array.
    const char *key;
    size_t key_length;
    ctoml_kind kind;
    /// A scalar's value as text (UTF-8, not NUL-terminated): a string's own characters
    /// (escapes resolved); an integer in decimal; a float in the shortest form that reads
    /// back to the same double ("inf", "-inf" and "nan" included); "true" or "false"; a date,
    /// time or date-time as TOML writes it. NULL for tables and arrays.
    const char *text;
    size_t text_length;
    /// Where the key naming this entry starts (a [[header]] element: the last key of its
    /// header line), or line 0 when nothing names it (an element of an inline array).
    ctoml_position key_position;
    /// Where the value starts (a scalar, an inline table's '{', an inline array's '['), or
    /// line 0 for a table or array of tables that headers or dotted keys make.
    ctoml_position value_position;
} ctoml_entry;

/// A parse's outcome. On success `error` is NULL; on failure `entries` is empty and
/// `error` is toml++'s description (NUL-terminated), at `error_position` (line 0 when the
/// failure has no place in the text, such as running out of memory).
typedef struct ctoml_document {
    const ctoml_entry *entries;
    size_t entry_count;
    const char *error;
    ctoml_position error_position;
} ctoml_document;

/// Parses `length` bytes of UTF-8 TOML text; `source_path` (may be NULL) is the file name
/// toml++ records with its positions. Never throws; returns NULL only when there is no
/// memory even for the result. Free the result, whatever it says, with ctoml_free.
ctoml_document *ctoml_parse(const char *text, size_t length, const char *source_path);

/// Frees a document and everything in it (entries, keys, texts, the error). NULL is allowed.
void ctoml_free(ctoml_document *document);

#ifdef __cplusplus
}
#endif
