import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('inference', '0002_deployments'),
    ]

    operations = [
        migrations.AddField(
            model_name='catalogmodel',
            name='max_queued_requests',
            field=models.PositiveIntegerField(default=128, validators=[django.core.validators.MinValueValidator(1)]),
        ),
        migrations.AddField(
            model_name='catalogmodel',
            name='request_timeout_s',
            field=models.PositiveIntegerField(default=300, validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(3600)]),
        ),
    ]
