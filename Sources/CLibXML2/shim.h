// Debian's libxml2 (libxml2-dev, pkg-config libxml-2.0): only the tree parser is used, by
// Sources/LibvirtXML/XMLDocument.swift.
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>
