// Every YAML file kiln reads (experiment configs, task mixtures, template sets, evaluation tasks)
// holds one document. yaml-cpp's Load keeps the first document of a stream and drops the rest
// without a word, so a file with a second document after a "---" line would lose its settings
// silently; these read every document and refuse a second one, naming the line it starts at.
#pragma once

#include <string>

#include <yaml-cpp/yaml.h>

namespace kiln {

// The one document of `text` (`source` names it in messages). Syntax errors propagate as
// YAML::Exception, for the caller to word; a second document is a kiln::Error
// "<source>:<line>: a second YAML document starts here ...".
YAML::Node load_one_yaml_document(const std::string& text, const std::string& source);

}  // namespace kiln
