"""BBSE (black-box shift estimation) moved to ``device/label_shift.py`` (numpy only), so the device's
drift watch estimates the class mix with the same code as ``edgecxr sitecheck``; re-exported here."""
from edgecxr.device.label_shift import bbse, joint_confusion, prevalence_from

__all__ = ["bbse", "joint_confusion", "prevalence_from"]
