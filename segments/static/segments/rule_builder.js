/* The segment rule builder: edits the rules JSON of the segment form without typing JSON.
 *
 * Everything it offers comes from the catalogue the server renders into the page
 * (<script type="application/json" id="rule-catalogue">, from segments.rules.rule_catalogue):
 * the fields, the operators each kind of field takes and the value each operator needs, the
 * groups and the limits. The rules <textarea> stays the form's field: the builder writes
 * the tree into it on every change, and reads it back when it is edited as JSON ("Edit as
 * JSON"); JSON that does not parse is reported and leaves the builder as it was. Without
 * script, the textarea is all there is.
 *
 * While the rules change, the live estimate (the catalogue's estimate_url) is asked once
 * they have been still for ESTIMATE_DELAY_MS; its answer (count, reach per channel, the
 * first matching profiles, or the errors of the tree) replaces the last one, in a polite
 * live region that therefore speaks only when the editing settles.
 *
 * Keyboard: every control is a native button, select, input or checkbox; after adding a
 * node the focus goes to its first control, after removing one to its neighbour (or to
 * the group's "Add condition"), after moving one it stays on the button pressed.
 */
(function () {
  "use strict";

  var ESTIMATE_DELAY_MS = 400;
  var OTHER_ATTRIBUTE = "__other__";

  var catalogue, textarea, panel, builderBox, errorsBox, estimateBox, previewBox;
  var jsonRow, jsonError, toggle, kindSelect;
  var root;
  var nextKey = 1;
  var fieldsByName = {};
  var pendingFocus = null;
  var estimateTimer = null;
  var jsonTimer = null;
  var inFlight = null;

  // --- small DOM helpers ------------------------------------------------------------------

  function el(tag, attributes, children) {
    var node = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (name) {
      var value = attributes[name];
      if (value === null || value === undefined || value === false) { return; }
      if (name === "text") { node.textContent = value; }
      else if (name === "className") { node.className = value; }
      else { node.setAttribute(name, value === true ? "" : value); }
    });
    (children || []).forEach(function (child) { if (child) { node.appendChild(child); } });
    return node;
  }

  function option(value, label, selected) {
    var item = el("option", { value: value, text: label });
    item.selected = !!selected;
    return item;
  }

  // --- the tree: parsed from JSON, written back as JSON ------------------------------------

  function newCondition() {
    var field = catalogue.fields[0];
    var op = operatorsOf(field.name)[0];
    return { kind: "condition", key: nextKey++, negate: false, field: field.name,
             op: op.op, value: defaultValue(op.value, undefined) };
  }

  function newGroup() {
    return { kind: "group", key: nextKey++, negate: false, join: "all", children: [] };
  }

  function isObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  function fromJson(value, where) {
    if (!isObject(value)) { throw new Error(where + ": a node must be an object"); }
    var keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "not") {
      var inner = fromJson(value.not, where + ".not");
      if (inner.negate) {
        var wrapper = newGroup();
        wrapper.negate = true;
        wrapper.children = [inner];
        return wrapper;
      }
      inner.negate = true;
      return inner;
    }
    if (keys.length === 1 && (keys[0] === "all" || keys[0] === "any")) {
      if (!Array.isArray(value[keys[0]])) { throw new Error(where + ": " + keys[0] + " needs a list"); }
      var group = newGroup();
      group.join = keys[0];
      group.children = value[keys[0]].map(function (child, index) {
        return fromJson(child, where + "." + keys[0] + "[" + index + "]");
      });
      return group;
    }
    var extra = keys.filter(function (key) { return ["field", "op", "value"].indexOf(key) === -1; });
    if (typeof value.field !== "string" || typeof value.op !== "string" || extra.length) {
      throw new Error(where + ": neither a group (all, any, not) nor a condition {field, op, value}");
    }
    knowField(value.field, where);
    return { kind: "condition", key: nextKey++, negate: false, field: value.field,
             op: value.op, value: value.value };
  }

  function toJson(node) {
    var json;
    if (node.kind === "group") {
      json = {};
      json[node.join] = node.children.map(toJson);
    } else {
      json = { field: node.field, op: node.op, value: node.value === undefined ? null : node.value };
    }
    return node.negate ? { not: json } : json;
  }

  function treeJson() {
    if (!root.negate && root.join === "all" && root.children.length === 0) { return {}; }
    return toJson(root);
  }

  // --- the catalogue: fields, operators, values ---------------------------------------------

  function knowField(name, where) {
    if (fieldsByName[name]) { return; }
    var prefix = catalogue.attribute_prefix;
    if (name.indexOf(prefix) === 0) {
      // An attribute key no profile of the sample holds: offered as "other attribute".
      fieldsByName[name] = { name: name, label: "Attribute: " + name.slice(prefix.length),
                             kind: "attribute", other: true };
      return;
    }
    throw new Error(where + ': the builder does not know the field "' + name + '"');
  }

  function kindOf(fieldName) {
    var field = fieldsByName[fieldName];
    return field ? field.kind : "attribute";
  }

  function operatorsOf(fieldName) {
    return catalogue.operators[kindOf(fieldName)];
  }

  function operatorOf(node) {
    var found = operatorsOf(node.field).filter(function (op) { return op.op === node.op; });
    return found.length ? found[0] : null;
  }

  function scalarType(value) {
    if (typeof value === "number") { return "number"; }
    if (typeof value === "boolean") { return "boolean"; }
    return "text";
  }

  function fits(valueKind, value) {
    switch (valueKind) {
      case "text": return typeof value === "string";
      case "moment": return typeof value === "string";
      case "number": return typeof value === "number";
      case "days": return typeof value === "number" && value % 1 === 0;
      case "boolean": return typeof value === "boolean";
      case "scalar": return ["string", "number", "boolean"].indexOf(typeof value) !== -1;
      case "list": return Array.isArray(value);
      default: return false;
    }
  }

  function defaultValue(valueKind, previous) {
    if (previous !== undefined && fits(valueKind, previous)) { return previous; }
    if (valueKind === "list" && ["string", "number", "boolean"].indexOf(typeof previous) !== -1 &&
        previous !== "") {
      return [previous];
    }
    return { text: "", moment: "", number: null, days: 30, boolean: true, scalar: "", list: [] }[valueKind];
  }

  function parseNumber(text) {
    var number = Number(text);
    return text.trim() === "" || !isFinite(number) ? null : number;
  }

  // --- structure changes --------------------------------------------------------------------

  function find(node, key, parent) {
    if (node.key === key) { return { node: node, parent: parent }; }
    if (node.kind !== "group") { return null; }
    for (var i = 0; i < node.children.length; i++) {
      var found = find(node.children[i], key, node);
      if (found) { return found; }
    }
    return null;
  }

  function countNodes(node) {
    var own = node.negate ? 2 : 1;
    if (node.kind !== "group") { return own; }
    return node.children.reduce(function (sum, child) { return sum + countNodes(child); }, own);
  }

  function focusFirstOf(node) {
    pendingFocus = { key: node.key, role: "first" };
  }

  function add(groupKey, kind) {
    var group = find(root, groupKey, null).node;
    var node = kind === "group" ? newGroup() : newCondition();
    if (kind === "group") { node.children.push(newCondition()); }
    group.children.push(node);
    focusFirstOf(node);
    changed();
  }

  function remove(key) {
    var found = find(root, key, null);
    var siblings = found.parent.children;
    var index = siblings.indexOf(found.node);
    siblings.splice(index, 1);
    var neighbour = siblings[index] || siblings[index - 1];
    pendingFocus = neighbour ? { key: neighbour.key, role: "first" }
                             : { key: found.parent.key, role: "add-condition" };
    changed();
  }

  function move(key, step, role) {
    var found = find(root, key, null);
    var siblings = found.parent.children;
    var index = siblings.indexOf(found.node);
    var target = index + step;
    if (target < 0 || target >= siblings.length) { return; }
    siblings.splice(index, 1);
    siblings.splice(target, 0, found.node);
    var stillMovable = step < 0 ? target > 0 : target < siblings.length - 1;
    pendingFocus = { key: key, role: stillMovable ? role : (role === "up" ? "down" : "up") };
    changed();
  }

  // --- rendering ----------------------------------------------------------------------------

  function nodeName(node, number) {
    var noun = node.kind === "group" ? "group" : "condition";
    return number ? noun + " " + number : "the top group";
  }

  function controls(node, parent, index, number) {
    var name = nodeName(node, number);
    var last = parent.children.length - 1;
    return el("div", { className: "rule-node-controls" }, [
      el("button", { type: "button", className: "button rule-up", "data-role": "up",
                     "aria-label": "Move up " + name, disabled: index === 0, text: "Move up" }),
      el("button", { type: "button", className: "button rule-down", "data-role": "down",
                     "aria-label": "Move down " + name, disabled: index === last, text: "Move down" }),
      el("button", { type: "button", className: "button rule-remove", "data-role": "remove",
                     "aria-label": "Remove " + name, text: "Remove" }),
    ]);
  }

  function negateBox(node, name) {
    var id = "rule-" + node.key + "-not";
    // Named with its node: a screen reader's list of controls tells the "Not"s apart.
    var box = el("input", { type: "checkbox", id: id, "data-role": "not", "aria-label": "Not " + name });
    box.checked = node.negate;
    return el("span", { className: "rule-not" }, [
      box,
      el("label", { for: id, className: "vCheckboxLabel", text: "Not" }),
    ]);
  }

  function renderCondition(node, parent, index, number) {
    var name = nodeName(node, number);
    var fieldSelect = el("select", { "data-role": "first", "data-part": "field", "aria-label": "Field of " + name });
    var groups = { text: "Profile", date: "Profile", consent: "Consent", attribute: "Attributes" };
    var optgroups = {};
    catalogue.fields.forEach(function (field) {
      var label = groups[field.kind];
      if (!optgroups[label]) {
        optgroups[label] = el("optgroup", { label: label });
        fieldSelect.appendChild(optgroups[label]);
      }
      optgroups[label].appendChild(option(field.name, field.label, field.name === node.field));
    });
    var other = fieldsByName[node.field] && fieldsByName[node.field].other;
    if (!optgroups.Attributes) {
      optgroups.Attributes = el("optgroup", { label: "Attributes" });
      fieldSelect.appendChild(optgroups.Attributes);
    }
    optgroups.Attributes.appendChild(option(OTHER_ATTRIBUTE, "Other attribute…", other));

    var parts = [fieldSelect];
    if (other) {
      parts.push(el("input", { type: "text", "data-part": "attribute-key", className: "rule-key",
                               "aria-label": "Attribute key of " + name,
                               value: node.field.slice(catalogue.attribute_prefix.length) }));
    }
    var opSelect = el("select", { "data-part": "op", "aria-label": "Operator of " + name });
    var known = operatorOf(node);
    if (!known) { opSelect.appendChild(option(node.op, node.op + " (not for this field)", true)); }
    operatorsOf(node.field).forEach(function (op) {
      opSelect.appendChild(option(op.op, op.label, op.op === node.op));
    });
    parts.push(opSelect);
    if (known) { parts = parts.concat(valueInputs(node, known.value, name)); }
    return el("li", { className: "rule-condition", "data-key": node.key }, [
      el("div", { className: "rule-condition-line" }, [negateBox(node, name)].concat(parts)),
      controls(node, parent, index, number),
    ]);
  }

  function valueInputs(node, valueKind, name) {
    var label = "Value of " + name;
    var value = node.value;
    switch (valueKind) {
      case "boolean": {
        var select = el("select", { "data-part": "value", "data-value": "boolean", "aria-label": label });
        select.appendChild(option("true", "true", value === true));
        select.appendChild(option("false", "false", value === false));
        return [select];
      }
      case "number":
        return [el("input", { type: "number", step: "any", "data-part": "value", "data-value": "number",
                              "aria-label": label, value: value === null || value === undefined ? "" : String(value) })];
      case "days":
        return [el("input", { type: "number", min: "1", max: String(catalogue.limits.max_within_days), step: "1",
                              "data-part": "value", "data-value": "number", "aria-label": label + " (days)",
                              value: value === null || value === undefined ? "" : String(value) })];
      case "moment": {
        var plain = typeof value === "string" && /^\d{4}-\d{2}-\d{2}$/.test(value);
        return [el("input", { type: plain || value === "" ? "date" : "text", "data-part": "value",
                              "data-value": "text", "aria-label": label + " (date, e.g. 2024-05-01)",
                              value: typeof value === "string" ? value : "" })];
      }
      case "list": {
        var typed = kindOf(node.field) === "attribute";
        var items = Array.isArray(value) ? value : [];
        var listType = items.length && items.every(function (item) { return typeof item === "number"; })
          ? "number" : "text";
        var inputs = [];
        if (typed) {
          var typeSelect = el("select", { "data-part": "list-type", "aria-label": "Type of the values of " + name });
          typeSelect.appendChild(option("text", "text", listType === "text"));
          typeSelect.appendChild(option("number", "numbers", listType === "number"));
          inputs.push(typeSelect);
        }
        inputs.push(el("textarea", { rows: "3", cols: "24", "data-part": "value", "data-value": "list",
                                     "aria-label": label + ", one a line" }));
        inputs[inputs.length - 1].value = items.map(String).join("\n");
        return inputs;
      }
      case "scalar": {
        var type = scalarType(value);
        var scalarSelect = el("select", { "data-part": "scalar-type", "aria-label": "Type of the value of " + name });
        [["text", "text"], ["number", "number"], ["boolean", "true or false"]].forEach(function (pair) {
          scalarSelect.appendChild(option(pair[0], pair[1], pair[0] === type));
        });
        var inputsOfScalar = [scalarSelect];
        if (type === "boolean") {
          inputsOfScalar = inputsOfScalar.concat(valueInputs(node, "boolean", name));
        } else if (type === "number") {
          inputsOfScalar = inputsOfScalar.concat(valueInputs(node, "number", name));
        } else {
          inputsOfScalar = inputsOfScalar.concat(valueInputs(node, "text", name));
        }
        return inputsOfScalar;
      }
      default:
        return [el("input", { type: "text", "data-part": "value", "data-value": "text", "aria-label": label,
                              maxlength: String(catalogue.limits.max_text_length),
                              value: typeof value === "string" ? value : "" })];
    }
  }

  function jsonDepth(node, depth) {
    // How deep the node's children sit in the JSON tree (a "not" is a level of its own).
    return depth + (node.negate ? 1 : 0) + 1;
  }

  function renderGroup(node, parent, index, number, depth) {
    var name = nodeName(node, number);
    var join = el("select", { "data-role": "first", "data-part": "join", "aria-label": "Match of " + name });
    join.appendChild(option("all", "All of these", node.join === "all"));
    join.appendChild(option("any", "Any of these", node.join === "any"));
    var childDepth = jsonDepth(node, depth);
    var list = el("ol", { className: "rule-children" });
    node.children.forEach(function (child, childIndex) {
      var childNumber = (number ? number + "." : "") + (childIndex + 1);
      list.appendChild(child.kind === "group"
        ? renderGroup(child, node, childIndex, childNumber, childDepth)
        : renderCondition(child, node, childIndex, childNumber));
    });
    var full = countNodes(root) >= catalogue.limits.max_nodes;
    var head = [negateBox(node, name), join];
    var box = el(parent ? "li" : "div", { className: "rule-group" + (parent ? "" : " rule-root"), "data-key": node.key }, [
      el("div", { className: "rule-group-head" }, head),
      node.children.length ? list : el("p", { className: "help", text: node === root
        ? "No conditions: every profile matches." : "No conditions yet." }),
      el("div", { className: "rule-group-actions" }, [
        el("button", { type: "button", className: "button", "data-role": "add-condition",
                       "aria-label": "Add condition to " + name, disabled: full || childDepth > catalogue.limits.max_depth,
                       text: "Add condition" }),
        el("button", { type: "button", className: "button", "data-role": "add-group",
                       "aria-label": "Add group to " + name,
                       disabled: full || childDepth + 1 > catalogue.limits.max_depth, text: "Add group" }),
      ]),
    ]);
    if (parent) { box.appendChild(controls(node, parent, index, number)); }
    return box;
  }

  function render() {
    builderBox.replaceChildren(renderGroup(root, null, 0, "", 0));
    if (!pendingFocus) { return; }
    var want = pendingFocus;
    pendingFocus = null;
    var holder = builderBox.querySelector('[data-key="' + want.key + '"]');
    if (!holder) { return; }
    // The node's own control, not one of a nested node's.
    var own = Array.prototype.filter.call(
      holder.querySelectorAll('[data-role="' + want.role + '"], [data-part="' + want.role + '"]'),
      function (control) { return control.closest("[data-key]") === holder; }
    );
    if (own.length) { own[0].focus(); }
  }

  // --- events -------------------------------------------------------------------------------

  function nodeOf(target) {
    var holder = target.closest("[data-key]");
    return holder ? find(root, Number(holder.dataset.key), null) : null;
  }

  function onClick(event) {
    var button = event.target.closest("button[data-role]");
    if (!button || button.disabled) { return; }
    var found = nodeOf(button);
    var role = button.dataset.role;
    if (role === "add-condition" || role === "add-group") {
      add(found.node.key, role === "add-group" ? "group" : "condition");
    } else if (role === "remove") {
      remove(found.node.key);
    } else if (role === "up" || role === "down") {
      move(found.node.key, role === "up" ? -1 : 1, role);
    }
  }

  function onChange(event) {
    var input = event.target;
    var found = nodeOf(input);
    if (!found) { return; }
    var node = found.node;
    var part = input.dataset.part;
    if (input.dataset.role === "not") {
      node.negate = input.checked;
      pendingFocus = { key: node.key, role: "not" };
      changed();
    } else if (part === "join") {
      node.join = input.value;
      changed(true);
    } else if (part === "field") {
      if (input.value === OTHER_ATTRIBUTE) {
        var name = catalogue.attribute_prefix + "key";
        fieldsByName[name] = fieldsByName[name] || { name: name, label: "Attribute: key", kind: "attribute", other: true };
        node.field = name;
        pendingFocus = { key: node.key, role: "attribute-key" };
      } else {
        node.field = input.value;
        pendingFocus = { key: node.key, role: "first" };
      }
      var ops = operatorsOf(node.field);
      var same = ops.filter(function (op) { return op.op === node.op; });
      var op = same.length ? same[0] : ops[0];
      node.op = op.op;
      node.value = defaultValue(op.value, node.value);
      changed();
    } else if (part === "op") {
      var chosen = operatorOf({ field: node.field, op: input.value });
      node.op = input.value;
      node.value = defaultValue(chosen.value, node.value);
      pendingFocus = { key: node.key, role: "op" };
      changed();
    } else if (part === "scalar-type") {
      var text = node.value === null || node.value === undefined ? "" : String(node.value);
      node.value = input.value === "number" ? parseNumber(text) : input.value === "boolean" ? true : text;
      pendingFocus = { key: node.key, role: "scalar-type" };
      changed();
    } else if (part === "list-type") {
      var items = Array.isArray(node.value) ? node.value : [];
      node.value = items.map(function (item) { return input.value === "number" ? parseNumber(String(item)) : String(item); });
      changed(true);
    } else if (part === "value" && input.dataset.value === "boolean") {
      node.value = input.value === "true";
      changed(true);
    }
  }

  function onInput(event) {
    var input = event.target;
    if (input.tagName === "SELECT" || input.type === "checkbox") { return; }  // their "change" event
    var found = nodeOf(input);
    if (!found) { return; }
    var node = found.node;
    if (input.dataset.part === "attribute-key") {
      node.field = catalogue.attribute_prefix + input.value.trim();
      knowField(node.field, "");
    } else if (input.dataset.part === "value") {
      if (input.dataset.value === "number") {
        node.value = parseNumber(input.value);
      } else if (input.dataset.value === "list") {
        var typeSelect = input.parentNode.querySelector('[data-part="list-type"]');
        var numbers = typeSelect && typeSelect.value === "number";
        node.value = input.value.split("\n").map(function (line) { return line.trim(); })
          .filter(function (line) { return line !== ""; })
          .map(function (line) { return numbers ? parseNumber(line) : line; });
      } else {
        node.value = input.value;
      }
    } else {
      return;
    }
    changed(true);
  }

  // The builder changed: write the JSON, redraw (unless only a value was typed, which would
  // take the caret away) and ask for the estimate once the editing settles.
  function changed(keepDom) {
    textarea.value = JSON.stringify(treeJson());
    jsonError.hidden = true;
    if (!keepDom) { render(); }
    scheduleEstimate();
  }

  // The JSON was edited: show it in the builder, or say why it cannot be shown.
  function readJson() {
    var parsed;
    try {
      parsed = JSON.parse(textarea.value.trim() === "" ? "{}" : textarea.value);
    } catch (error) {
      showJsonError("The JSON does not parse (" + error.message + "); the builder keeps its last state.");
      return;
    }
    try {
      var tree = isObject(parsed) && Object.keys(parsed).length === 0 ? newGroup() : fromJson(parsed, "rules");
      if (tree.kind !== "group") {
        var wrapper = newGroup();
        wrapper.children = [tree];
        tree = wrapper;
      }
      root = tree;
      jsonError.hidden = true;
      render();
    } catch (error) {
      showJsonError("The builder cannot show this tree (" + error.message + "); edit it as JSON.");
    }
    scheduleEstimate(parsed);
  }

  function showJsonError(message) {
    jsonError.textContent = message;
    jsonError.hidden = false;
  }

  // --- the live estimate --------------------------------------------------------------------

  function scheduleEstimate(tree) {
    window.clearTimeout(estimateTimer);
    estimateTimer = window.setTimeout(function () {
      estimate(tree === undefined ? treeJson() : tree);
    }, ESTIMATE_DELAY_MS);
  }

  function csrfToken() {
    var input = textarea.form.querySelector('input[name="csrfmiddlewaretoken"]');
    return input ? input.value : "";
  }

  function estimate(tree) {
    if (inFlight) { inFlight.abort(); }
    var controller = new AbortController();
    inFlight = controller;
    estimateBox.setAttribute("aria-busy", "true");
    fetch(catalogue.estimate_url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify({ rules: tree }),
      signal: controller.signal,
    }).then(function (response) {
      return response.json().then(function (body) { return { status: response.status, body: body }; });
    }).then(function (answer) {
      if (inFlight !== controller) { return; }
      inFlight = null;
      showEstimate(answer.status, answer.body);
    }).catch(function (error) {
      if (error.name === "AbortError") { return; }
      inFlight = null;
      showEstimate(0, { detail: "The estimate could not be fetched (" + error.message + ")." });
    });
  }

  function showEstimate(status, body) {
    estimateBox.removeAttribute("aria-busy");
    errorsBox.replaceChildren();
    if (status !== 200) {
      (body.errors || [body.detail]).forEach(function (message) {
        errorsBox.appendChild(el("li", { text: message }));
      });
      estimateBox.replaceChildren(el("p", { text: status === 400
        ? "No count: the rules are invalid (see the errors above)." : "No count: " + body.detail }));
      previewBox.replaceChildren();
      return;
    }
    // A sampled answer (a large profiles table) reads "≈ 1,234,000 ± 8,000 (sampled)".
    var sampled = body.exact === false;
    var reach = el("ul", { className: "rule-reach" });
    Object.keys(body.reach).forEach(function (channel) {
      var margin = (body.reach_margin || {})[channel] || 0;
      reach.appendChild(el("li", { "data-channel": channel,
        text: (catalogue.channels[channel] || channel) + ": " + figure(body.reach[channel], sampled, margin) }));
    });
    estimateBox.replaceChildren(
      el("p", {}, [
        el("strong", { "data-role": "count", text: figure(body.count, sampled, body.margin || 0) }),
        document.createTextNode(sampled
          ? " profiles match now (sampled: counted over a part of the profiles table, 95% margin; activation counts exactly)."
          : body.count === 1 ? " profile matches now." : " profiles match now."),
      ]),
      el("p", { text: "Reachable for marketing (consent given and an address present):" }),
      reach
    );
    showPreview(body.preview || {});
  }

  function figure(count, sampled, margin) {
    return sampled
      ? "\u2248 " + count.toLocaleString("en") + " \u00b1 " + margin.toLocaleString("en")
      : count.toLocaleString("en");
  }

  function showPreview(preview) {
    if (preview.refusal) {
      previewBox.replaceChildren(el("p", { className: "help", text: "Members are not shown: " + preview.refusal }));
      return;
    }
    var profiles = preview.profiles || [];
    if (!profiles.length) { previewBox.replaceChildren(); return; }
    var head = el("tr", {}, ["External id", "Email", "Phone", "Locale", "Consent"].map(function (title) {
      return el("th", { scope: "col", text: title });
    }));
    var rows = profiles.map(function (profile) {
      return el("tr", {}, [
        el("td", {}, [el("a", { href: profile.url, text: profile.external_id })]),
        el("td", { text: profile.email || "—" }),
        el("td", { text: profile.phone || "—" }),
        el("td", { text: profile.locale || "—" }),
        el("td", { text: profile.consent || "none" }),
      ]);
    });
    previewBox.replaceChildren(el("table", { className: "segment-preview" }, [
      el("caption", { text: "First matching profiles" }),
      el("thead", {}, [head]),
      el("tbody", {}, rows),
    ]));
  }

  // --- set-up -------------------------------------------------------------------------------

  function showForKind() {
    var rulesKind = !kindSelect || kindSelect.value !== "static";
    panel.hidden = !rulesKind;
    if (!rulesKind) { jsonRow.hidden = false; }
    else { jsonRow.hidden = toggle.getAttribute("aria-expanded") !== "true"; }
  }

  function start() {
    var source = document.getElementById("rule-catalogue");
    textarea = document.getElementById("id_rules");
    panel = document.getElementById("rule-builder-panel");
    if (!source || !textarea || !panel || textarea.tagName !== "TEXTAREA") { return; }
    catalogue = JSON.parse(source.textContent);
    catalogue.fields.forEach(function (field) { fieldsByName[field.name] = field; });
    builderBox = document.getElementById("rule-builder");
    errorsBox = document.getElementById("rule-builder-errors");
    estimateBox = document.getElementById("rule-estimate");
    previewBox = document.getElementById("rule-live-preview");
    jsonError = document.getElementById("rule-json-error");
    toggle = document.getElementById("rule-json-toggle");
    kindSelect = document.getElementById("id_kind");
    jsonRow = textarea.closest(".form-row") || textarea.parentNode;
    jsonRow.id = "rule-json-row";
    jsonRow.before(panel);
    jsonRow.appendChild(jsonError);
    // The saved members' preview is replaced by the live one, which follows the edits.
    var savedPreview = document.getElementById("segment-preview");
    if (savedPreview) { savedPreview.hidden = true; }

    root = newGroup();
    var invalidOnServer = jsonRow.querySelector(".errorlist");
    toggle.setAttribute("aria-expanded", invalidOnServer ? "true" : "false");
    toggle.addEventListener("click", function () {
      var open = toggle.getAttribute("aria-expanded") !== "true";
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
      jsonRow.hidden = !open;
      if (open) { textarea.focus(); }
    });
    builderBox.addEventListener("click", onClick);
    builderBox.addEventListener("change", onChange);
    builderBox.addEventListener("input", onInput);
    textarea.addEventListener("input", function () {
      window.clearTimeout(jsonTimer);
      jsonTimer = window.setTimeout(readJson, ESTIMATE_DELAY_MS);
    });
    if (kindSelect && kindSelect.tagName === "SELECT") { kindSelect.addEventListener("change", showForKind); }
    else { kindSelect = null; }
    render();
    readJson();
    if (!jsonError.hidden) { toggle.setAttribute("aria-expanded", "true"); }
    showForKind();
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); }
  else { start(); }
})();
