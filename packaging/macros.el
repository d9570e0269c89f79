# The RPM macros an EL builder has and Debian's rpmbuild lacks, for building kvmhooks'
# EL RPMs on Debian: scripts/build-rpm loads this file (`rpmbuild --load`) and defines
# %rhel (9 or 10) after it. On EL, python3-devel and systemd-rpm-macros define all of
# these; nothing here is meant to differ from what they expand to.

# python-rpm-macros (python3-devel): the distro's one Python 3.
%python3_version %[0%{?rhel} >= 10 ? "3.12" : "3.9"]
%__python3 /usr/bin/python3
%python3_sitelib /usr/lib/python%{python3_version}/site-packages

# redhat-rpm-config: the dist tag and the doc directory name (no version in it).
%dist .el%{rhel}
%_docdir_fmt %%{NAME}

# systemd-rpm-macros: the paths (as systemd 252 on EL9 and 257 on EL10 configure them).
%_systemd_util_dir /usr/lib/systemd
%_unitdir /usr/lib/systemd/system
%_presetdir /usr/lib/systemd/system-preset
%_udevrulesdir /usr/lib/udev/rules.d

# systemd-rpm-macros: the scriptlet macros. Their expansion is EL's, line for line:
# each hands its units to systemd's own helper, which EL's systemd package ships,
#   install-system-units:      systemctl --no-reload preset UNITS (enable per the presets)
#   remove-system-units:       systemctl --no-reload disable [--now] UNITS
#   mark-restart-system-units: mark UNITS needs-restart; systemd's file trigger restarts
#                              the marked units that run, once, at the transaction's end
# and does nothing where that helper is absent (no systemd).
%systemd_ordering \
OrderWithRequires(post): systemd \
OrderWithRequires(preun): systemd \
OrderWithRequires(postun): systemd \
%{nil}

%systemd_post() \
if [ $1 -eq 1 ] && [ -x "%{_systemd_util_dir}/systemd-update-helper" ]; then \
    # Initial installation \
    %{_systemd_util_dir}/systemd-update-helper install-system-units %{?*} || : \
fi \
%{nil}

%systemd_preun() \
if [ $1 -eq 0 ] && [ -x "%{_systemd_util_dir}/systemd-update-helper" ]; then \
    # Package removal, not upgrade \
    %{_systemd_util_dir}/systemd-update-helper remove-system-units %{?*} || : \
fi \
%{nil}

%systemd_postun() \
%{nil}

%systemd_postun_with_restart() \
if [ $1 -ge 1 ] && [ -x "%{_systemd_util_dir}/systemd-update-helper" ]; then \
    # Package upgrade, not uninstall \
    %{_systemd_util_dir}/systemd-update-helper mark-restart-system-units %{?*} || : \
fi \
%{nil}
