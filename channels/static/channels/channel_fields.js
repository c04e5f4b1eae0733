/* Shows only the fields and presets of the chosen channel, on the campaign page's channel
 * actions and on the message preset form.
 *
 * The server renders the facts (channels.choices): a channel <select data-channel-select>;
 * inputs that only some channels have carry data-channels="email push"; a preset picker
 * <select data-channel-options> has data-channel on each option. Inputs another channel has
 * are hidden and disabled (a disabled input is not sent, so the services never see a value
 * the marketer cannot see); the picker offers only the chosen channel's presets. A row added
 * with "Add another" (Django's formset:added event) is set up the same way.
 */
(function () {
  "use strict";

  function scopeOf(select) {
    return select.closest("tr.form-row") || select.form || document;
  }

  function showFields(scope, channel) {
    scope.querySelectorAll("[data-channels]").forEach(function (input) {
      var off = channel !== "" && input.dataset.channels.split(" ").indexOf(channel) === -1;
      input.disabled = off;
      var cell = input.closest("td");
      if (cell) {
        // A table cell stays, empty, under its column header; its contents go.
        Array.prototype.forEach.call(cell.children, function (child) { child.hidden = off; });
      } else {
        var box = input.closest("fieldset") || input.closest(".form-row");
        if (box) { box.hidden = off; }
      }
    });
  }

  function offerPresets(scope, channel) {
    scope.querySelectorAll("select[data-channel-options]").forEach(function (picker) {
      if (!picker.salvoOptions) {
        picker.salvoOptions = Array.prototype.slice.call(picker.options);
      }
      var chosen = picker.value;
      var offered = picker.salvoOptions.filter(function (option) {
        var of = option.dataset.channel;
        return !of || channel === "" || of === channel;
      });
      picker.replaceChildren.apply(picker, offered);
      picker.value = offered.some(function (option) { return option.value === chosen; }) ? chosen : "";
    });
  }

  function apply(select) {
    var scope = scopeOf(select);
    showFields(scope, select.value);
    offerPresets(scope, select.value);
  }

  function setUp(root) {
    root.querySelectorAll("select[data-channel-select]").forEach(function (select) {
      if (select.name.indexOf("__prefix__") !== -1) { return; }  // the formset's template row
      apply(select);
    });
  }

  document.addEventListener("change", function (event) {
    if (event.target.matches && event.target.matches("select[data-channel-select]")) {
      apply(event.target);
    }
  });
  document.addEventListener("formset:added", function (event) { setUp(event.target); });
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { setUp(document); });
  } else {
    setUp(document);
  }
})();
